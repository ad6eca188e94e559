package controllers

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// KeysJSONKey is the ConfigMap entry that holds every key as a JSON array sorted by id.
const KeysJSONKey = "keys.json"

// KeysJSONGzipKey is the binaryData entry that holds keys.json gzip-compressed, instead of
// keys.json, when the plain form would not fit in a ConfigMap.
const KeysJSONGzipKey = "keys.json.gz"

// maxConfigMapDataBytes keeps the rendered content safely below the API server's 1 MiB limit on
// a ConfigMap's data, leaving room for metadata and managed fields.
const maxConfigMapDataBytes = 1000 * 1024

// content is what a ConfigMap holds: one "<key_id>: <State>" entry per key, and every key in
// keys.json (or, for selectors too large for that, keys.json.gz in BinaryData).
type content struct {
	Data       map[string]string
	BinaryData map[string][]byte
}

// tooLargeError reports keys that do not fit in one ConfigMap even in the compact form.
type tooLargeError struct{ keys, size int }

func (e *tooLargeError) Error() string {
	return fmt.Sprintf("%d keys need %d bytes even with keys.json compressed, more than the %d a ConfigMap can hold; narrow spec.tags or spec.matches",
		e.keys, e.size, maxConfigMapDataBytes)
}

// renderContent renders keys, sorted by id as the client returns them. It is deterministic, so
// the same keys give the same bytes.
func renderContent(keys []kms.Key) (content, error) {
	data, err := renderData(keys)
	if err != nil {
		return content{}, err
	}
	c := content{Data: data}
	if c.size() <= maxConfigMapDataBytes {
		return c, nil
	}
	compressed, err := gzipBytes([]byte(data[KeysJSONKey]), gzip.BestCompression)
	if err != nil {
		return content{}, err
	}
	delete(data, KeysJSONKey)
	c.BinaryData = map[string][]byte{KeysJSONGzipKey: compressed}
	if size := c.size(); size > maxConfigMapDataBytes {
		return content{}, &tooLargeError{keys: len(keys), size: size}
	}
	return c, nil
}

// gzipBytes compresses b; with a zero header (no name, no time) the output depends on b alone.
func gzipBytes(b []byte, level int) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, level)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, fmt.Errorf("compressing %s: %w", KeysJSONKey, err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("compressing %s: %w", KeysJSONKey, err)
	}
	return buf.Bytes(), nil
}

// size is the number of bytes the content adds to a ConfigMap.
func (c content) size() int {
	n := 0
	for k, v := range c.Data {
		n += len(k) + len(v)
	}
	for k, v := range c.BinaryData {
		n += len(k) + len(v)
	}
	return n
}

// digest identifies the content: equal digests mean equal bytes.
func (c content) digest() string {
	h := sha256.New()
	for _, k := range sortedKeys(c.Data) {
		fmt.Fprintf(h, "d%d:%s%d:%s", len(k), k, len(c.Data[k]), c.Data[k])
	}
	for _, k := range sortedKeys(c.BinaryData) {
		fmt.Fprintf(h, "b%d:%s%d:%s", len(k), k, len(c.BinaryData[k]), c.BinaryData[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// details is the entry that holds every key's details, in whichever form it takes.
func (c content) details() string {
	if gz, ok := c.BinaryData[KeysJSONGzipKey]; ok {
		return string(gz)
	}
	return c.Data[KeysJSONKey]
}

// keyRecord is one element of keys.json. Field order is fixed, so the same keys give the same bytes.
type keyRecord struct {
	ID           string            `json:"id"`
	Alias        string            `json:"alias"`
	State        string            `json:"state"`
	Spec         string            `json:"spec"`
	Usage        string            `json:"usage"`
	Origin       string            `json:"origin"`
	Tags         map[string]string `json:"tags"`
	CreationDate string            `json:"creationDate"`
}

// renderData turns keys, sorted by id as the client returns them, into the ConfigMap's data: one
// "<key_id>: <State>" entry per key, and keys.json. It is deterministic: encoding/json sorts map
// keys, and the records keep the keys' order.
func renderData(keys []kms.Key) (map[string]string, error) {
	data := make(map[string]string, len(keys)+1)
	records := make([]keyRecord, 0, len(keys))
	for _, k := range keys {
		if errs := validation.IsConfigMapKey(k.ID); len(errs) > 0 || k.ID == KeysJSONKey {
			return nil, fmt.Errorf("key id %q cannot be a ConfigMap key", k.ID)
		}
		data[k.ID] = k.State.String()
		records = append(records, toRecord(k))
	}
	encoded, err := json.Marshal(records)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", KeysJSONKey, err)
	}
	data[KeysJSONKey] = string(encoded)
	return data, nil
}

func toRecord(k kms.Key) keyRecord {
	tags := k.Tags
	if tags == nil {
		tags = map[string]string{}
	}
	r := keyRecord{ID: k.ID, Alias: k.Alias, State: k.State.String(), Spec: k.Spec, Usage: k.Usage,
		Origin: k.Origin, Tags: tags}
	if !k.CreationDate.IsZero() {
		r.CreationDate = k.CreationDate.UTC().Format(time.RFC3339)
	}
	return r
}
