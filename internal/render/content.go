package render

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"sync"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

const (
	// MaxDataBytes keeps the content safely below the API server's limit of 1 MiB on a
	// ConfigMap's data and binaryData.
	MaxDataBytes = 1000 * 1024
	// MaxStoredBytes keeps the whole object, as etcd stores it, below etcd's default request
	// limit of 1.5 MiB. Server-side apply's managed fields name every data entry once more, so a
	// ConfigMap of many small entries reaches this limit long before the one on its data.
	// Against envtest's etcd at its defaults, ConfigMaps of 11,500 to 15,800 key entries beside a
	// 100 to 500 KB keys.json.gz were refused once StoredSize passed 1,596 to 1,606 KB: this
	// limit keeps a margin of about 10% (docs/benchmarks.md).
	MaxStoredBytes = 1400 * 1024
	// Per entry, StoredSize counts the entry's protobuf framing and its line in the managed
	// fields ("f:<key>":{},) besides the key and value; per object, the metadata.
	storedBytesPerEntry  = 16
	storedBytesPerObject = 4096
)

// Content is what a ConfigMap holds.
type Content struct {
	Data       map[string]string
	BinaryData map[string][]byte
}

// Fits tells whether the content passes the size checks made before a ConfigMap is written.
func (c Content) Fits() bool {
	return c.Size() <= MaxDataBytes && c.StoredSize() <= MaxStoredBytes
}

// StoredSize estimates the size of the ConfigMap as etcd stores it, managed fields included.
func (c Content) StoredSize() int {
	n := storedBytesPerObject
	for k, v := range c.Data {
		n += 2*len(k) + len(v) + storedBytesPerEntry
	}
	for k, v := range c.BinaryData {
		n += 2*len(k) + len(v) + storedBytesPerEntry
	}
	return n
}

// Size is the number of bytes the content adds to a ConfigMap's data, as the API server counts.
func (c Content) Size() int {
	n := 0
	for k, v := range c.Data {
		n += len(k) + len(v)
	}
	for k, v := range c.BinaryData {
		n += len(k) + len(v)
	}
	return n
}

// Digest identifies the content: equal digests mean equal bytes.
func (c Content) Digest() string {
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(c.Data)) {
		fmt.Fprintf(h, "d%d:%s%d:%s", len(k), k, len(c.Data[k]), c.Data[k])
	}
	for _, k := range slices.Sorted(maps.Keys(c.BinaryData)) {
		fmt.Fprintf(h, "b%d:%s%d:%s", len(k), k, len(c.BinaryData[k]), c.BinaryData[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Details is the entry that holds every key's details, in whichever form it takes.
func (c Content) Details() string {
	if gz, ok := c.BinaryData[kmsv1alpha1.KeysJSONGzipKey]; ok {
		return string(gz)
	}
	return c.Data[kmsv1alpha1.KeysJSONKey]
}

// gzipWriters holds reusable writers by compression level, from gzip.HuffmanOnly (index 0) to
// gzip.BestCompression: a new writer allocates its compressor's tables, more than the content
// of a thousand keys, for every sync.
var gzipWriters [gzip.BestCompression - gzip.HuffmanOnly + 1]sync.Pool

// Gzip compresses b; with a zero header (no name, no time) the output depends on b alone.
func Gzip(b []byte, level int) ([]byte, error) {
	if level < gzip.HuffmanOnly || level > gzip.BestCompression {
		return nil, fmt.Errorf("compressing: invalid level %d", level)
	}
	var buf bytes.Buffer
	pool := &gzipWriters[level-gzip.HuffmanOnly]
	zw, ok := pool.Get().(*gzip.Writer)
	if ok {
		zw.Reset(&buf)
	} else {
		var err error
		if zw, err = gzip.NewWriterLevel(&buf, level); err != nil {
			return nil, err
		}
	}
	defer pool.Put(zw)
	if _, err := zw.Write(b); err != nil {
		return nil, fmt.Errorf("compressing: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("compressing: %w", err)
	}
	return buf.Bytes(), nil
}
