package testkit

import (
	"strings"
	"sync"
	"testing"
)

func TestJSONLoggerWritesUpToItsVerbosity(t *testing.T) {
	var buf Buffer
	logger := JSONLogger(&buf, 3)
	logger.V(3).Info("three")
	logger.V(4).Info("four")
	logger.Info("zero", "key", "value")
	out := buf.String()
	if !strings.Contains(out, `"msg":"three"`) || !strings.Contains(out, `"key":"value"`) || strings.Contains(out, "four") {
		t.Errorf("log:\n%s", out)
	}
}

func TestBufferTakesConcurrentWritesAndReadsFromAnOffset(t *testing.T) {
	var buf Buffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				_, _ = buf.Write([]byte("x"))
			}
		})
	}
	wg.Wait()
	if buf.Len() != 800 {
		t.Fatalf("Len = %d, want 800", buf.Len())
	}
	from := buf.Len()
	_, _ = buf.Write([]byte("tail"))
	if got := buf.From(from); got != "tail" {
		t.Errorf("From(%d) = %q", from, got)
	}
	if got := buf.From(10_000); got != "" {
		t.Errorf("From past the end = %q", got)
	}
}
