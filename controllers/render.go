package controllers

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

const (
	// maxConfigMapDataBytes keeps the content safely below the API server's limit of 1 MiB on a
	// ConfigMap's data and binaryData.
	maxConfigMapDataBytes = 1000 * 1024
	// maxStoredBytes keeps the whole object, as etcd stores it, below etcd's default request
	// limit of 1.5 MiB. Server-side apply's managed fields name every data entry once more, so a
	// ConfigMap of many small entries reaches this limit long before the one on its data.
	// Against envtest's etcd at its defaults, ConfigMaps of 11,500 to 15,800 key entries beside a
	// 100 to 500 KB keys.json.gz were refused once storedSize passed 1,596 to 1,606 KB: this
	// limit keeps a margin of about 10% (docs/benchmarks.md).
	maxStoredBytes = 1400 * 1024
	// Per entry, storedSize counts the entry's protobuf framing and its line in the managed
	// fields ("f:<key>":{},) besides the key and value; per object, the metadata.
	storedBytesPerEntry  = 16
	storedBytesPerObject = 4096
)

// content is what a ConfigMap holds: one "<key_id>: <State>" entry per key, and every key in
// keys.json (or, for selectors too large for that, keys.json.gz in BinaryData).
type content struct {
	Data       map[string]string
	BinaryData map[string][]byte
}

// renderContent renders keys, sorted by id as the client returns them, with the selector's
// templates, if any. It is deterministic, so the same keys give the same bytes.
func renderContent(keys []kms.Key, tpls *templates) (content, error) {
	records := make([]keyRecord, 0, len(keys))
	for _, k := range keys {
		records = append(records, toRecord(k))
	}
	return renderRecords(records, tpls)
}

// renderRecords renders the records of keys.json: by default one "<key_id>: <State>" entry per
// key and keys.json itself, compressed into keys.json.gz when the plain form would not fit; and
// the templates' entries, which win on a clash or, with mergePolicy Replace, stand alone.
func renderRecords(records []keyRecord, tpls *templates) (content, error) {
	data := map[string]string{}
	if tpls == nil || !tpls.replace {
		var err error
		if data, err = renderData(records); err != nil {
			return content{}, failed(kmsv1alpha1.ReasonKMSRequestFailed, err)
		}
	}
	if tpls != nil {
		entries, err := tpls.render(records)
		if err != nil {
			return content{}, err
		}
		maps.Copy(data, entries)
	}
	c := content{Data: data}
	if c.fits() {
		return c, nil
	}
	if !tpls.defines(kmsv1alpha1.KeysJSONKey) && data[kmsv1alpha1.KeysJSONKey] != "" && !tpls.defines(kmsv1alpha1.KeysJSONGzipKey) {
		compressed, err := gzipBytes([]byte(data[kmsv1alpha1.KeysJSONKey]), gzip.BestCompression)
		if err != nil {
			return content{}, err
		}
		delete(data, kmsv1alpha1.KeysJSONKey)
		c.BinaryData = map[string][]byte{kmsv1alpha1.KeysJSONGzipKey: compressed}
	}
	if !c.fits() {
		return content{}, failedf(kmsv1alpha1.ReasonTargetTooLarge,
			"%d keys need %d bytes of data (%d stored) even with keys.json compressed, more than a ConfigMap can hold (%d, %d stored); narrow spec.tags or spec.matches",
			len(records), c.size(), c.storedSize(), maxConfigMapDataBytes, maxStoredBytes)
	}
	return c, nil
}

// rebuild renders again the content whose details (keys.json or keys.json.gz) stored holds, with
// the selector's templates, so that a ConfigMap whose other entries were edited can be repaired
// without calling KMS.
func rebuild(stored content, tpls *templates) (content, bool) {
	raw := []byte(stored.Data[kmsv1alpha1.KeysJSONKey])
	if gz, ok := stored.BinaryData[kmsv1alpha1.KeysJSONGzipKey]; ok {
		zr, err := gzip.NewReader(bytes.NewReader(gz))
		if err != nil {
			return content{}, false
		}
		if raw, err = io.ReadAll(io.LimitReader(zr, 64<<20)); err != nil {
			return content{}, false
		}
	}
	var records []keyRecord
	if err := json.Unmarshal(raw, &records); err != nil || records == nil {
		return content{}, false
	}
	c, err := renderRecords(records, tpls)
	return c, err == nil
}

// gzipBytes compresses b; with a zero header (no name, no time) the output depends on b alone.
func gzipBytes(b []byte, level int) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, level)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, fmt.Errorf("compressing: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("compressing: %w", err)
	}
	return buf.Bytes(), nil
}

func (c content) fits() bool {
	return c.size() <= maxConfigMapDataBytes && c.storedSize() <= maxStoredBytes
}

// storedSize estimates the size of the ConfigMap as etcd stores it, managed fields included.
func (c content) storedSize() int {
	n := storedBytesPerObject
	for k, v := range c.Data {
		n += 2*len(k) + len(v) + storedBytesPerEntry
	}
	for k, v := range c.BinaryData {
		n += 2*len(k) + len(v) + storedBytesPerEntry
	}
	return n
}

// size is the number of bytes the content adds to a ConfigMap's data, as the API server counts.
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
	if gz, ok := c.BinaryData[kmsv1alpha1.KeysJSONGzipKey]; ok {
		return string(gz)
	}
	return c.Data[kmsv1alpha1.KeysJSONKey]
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

// renderData turns records, sorted by id, into the ConfigMap's data: one "<key_id>: <State>"
// entry per key, and keys.json. It is deterministic: encoding/json sorts map keys, and the
// records keep their order.
func renderData(records []keyRecord) (map[string]string, error) {
	data := make(map[string]string, len(records)+1)
	for _, r := range records {
		if errs := validation.IsConfigMapKey(r.ID); len(errs) > 0 || r.ID == kmsv1alpha1.KeysJSONKey || r.ID == kmsv1alpha1.KeysJSONGzipKey {
			return nil, fmt.Errorf("key id %q cannot be a ConfigMap key", r.ID)
		}
		data[r.ID] = r.State
	}
	encoded, err := json.Marshal(records)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", kmsv1alpha1.KeysJSONKey, err)
	}
	data[kmsv1alpha1.KeysJSONKey] = string(encoded)
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
