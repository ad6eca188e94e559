package render

import (
	"bytes"
	"compress/gzip"
	"io"
	"testing"
)

func TestGzipReusesWritersWithoutChangingTheOutput(t *testing.T) {
	inputs := [][]byte{[]byte(`{"keys":["a","b"]}`), bytes.Repeat([]byte("kms-key-sync "), 5000), {}}
	for _, level := range []int{gzip.BestSpeed, gzip.BestCompression} {
		for round := range 3 {
			for _, in := range inputs {
				got, err := Gzip(in, level)
				if err != nil {
					t.Fatal(err)
				}
				var want bytes.Buffer
				zw, _ := gzip.NewWriterLevel(&want, level)
				_, _ = zw.Write(in)
				_ = zw.Close()
				if !bytes.Equal(got, want.Bytes()) {
					t.Fatalf("level %d, round %d: a reused writer compressed %d bytes differently from a new one", level, round, len(in))
				}
				zr, err := gzip.NewReader(bytes.NewReader(got))
				if err != nil {
					t.Fatal(err)
				}
				if back, err := io.ReadAll(zr); err != nil || !bytes.Equal(back, in) {
					t.Fatalf("level %d: the output does not decompress to the input: %v", level, err)
				}
			}
		}
	}
	if _, err := Gzip(nil, 42); err == nil {
		t.Error("an invalid level was accepted")
	}
}
