package controllers

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

func records(keys []kms.Key) []keyRecord {
	out := make([]keyRecord, len(keys))
	for i, k := range keys {
		out[i] = toRecord(k)
	}
	return out
}

func reasonOf(err error) string {
	if f := asFailure(err); f != nil {
		return f.reason
	}
	return ""
}

func TestRenderDataIsDeterministic(t *testing.T) {
	keys := []kms.Key{
		{ID: "a", Alias: "one", State: kms.StateEnabled, Tags: map[string]string{"z": "1", "a": "2", "m": "3"},
			CreationDate: time.Unix(1521449277, 0)},
		{ID: "b", State: kms.State(9)},
	}
	first, err := renderData(records(keys))
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		again, err := renderData(records(keys))
		if err != nil {
			t.Fatal(err)
		}
		if again[kmsv1alpha1.KeysJSONKey] != first[kmsv1alpha1.KeysJSONKey] {
			t.Fatalf("keys.json differs between renderings:\n%s\n%s", first[kmsv1alpha1.KeysJSONKey], again[kmsv1alpha1.KeysJSONKey])
		}
	}
	want := `[{"id":"a","alias":"one","state":"Enabled","spec":"","usage":"","origin":"","tags":{"a":"2","m":"3","z":"1"},"creationDate":"2018-03-19T08:47:57Z"},` +
		`{"id":"b","alias":"","state":"Unknown","spec":"","usage":"","origin":"","tags":{},"creationDate":""}]`
	if first[kmsv1alpha1.KeysJSONKey] != want {
		t.Errorf("keys.json = %s, want %s", first[kmsv1alpha1.KeysJSONKey], want)
	}
	if first["a"] != "Enabled" || first["b"] != "Unknown" || len(first) != 3 {
		t.Errorf("entries = %v", first)
	}
}

func TestRenderDataRefusesIDsThatCannotBeConfigMapKeys(t *testing.T) {
	for _, id := range []string{"a/b", "keys.json", "keys.json.gz", "", "with space"} {
		if _, err := renderContent([]kms.Key{{ID: id}}, nil); asFailure(err) == nil {
			t.Errorf("renderData accepted key id %q", id)
		}
	}
}

func manyKeys(n int) []kms.Key {
	keys := make([]kms.Key, n)
	for i := range keys {
		keys[i] = kms.Key{ID: fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i), Alias: fmt.Sprintf("payments-key-%d", i),
			State: kms.StateEnabled, Spec: "AES_256", Usage: "ENCRYPT_DECRYPT", Origin: "kms",
			Tags: map[string]string{"env": "prod", "team": "payments"}, CreationDate: time.Unix(1521449277+int64(i), 0)}
	}
	return keys
}

func TestRenderContentCompressesRatherThanDropsKeys(t *testing.T) {
	small, err := renderContent(manyKeys(100), nil)
	if err != nil || len(small.BinaryData) != 0 || small.Data[kmsv1alpha1.KeysJSONKey] == "" {
		t.Fatalf("100 keys: err=%v, binary entries %d; want plain keys.json", err, len(small.BinaryData))
	}

	keys := manyKeys(10_000)
	c, err := renderContent(keys, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, plain := c.Data[kmsv1alpha1.KeysJSONKey]; plain || len(c.BinaryData[kmsv1alpha1.KeysJSONGzipKey]) == 0 {
		t.Fatal("10,000 keys: want keys.json.gz instead of keys.json")
	}
	if len(c.Data) != len(keys) || c.size() > maxConfigMapDataBytes || c.storedSize() > maxStoredBytes {
		t.Fatalf("10,000 keys: %d entries, %d bytes", len(c.Data), c.size())
	}
	zr, err := gzip.NewReader(bytes.NewReader(c.BinaryData[kmsv1alpha1.KeysJSONGzipKey]))
	if err != nil {
		t.Fatal(err)
	}
	var records []keyRecord
	if err := json.NewDecoder(zr).Decode(&records); err != nil || len(records) != len(keys) || records[9999].ID != keys[9999].ID {
		t.Fatalf("keys.json.gz decodes to %d records, err %v", len(records), err)
	}
	again, _ := renderContent(keys, nil)
	if !bytes.Equal(again.BinaryData[kmsv1alpha1.KeysJSONGzipKey], c.BinaryData[kmsv1alpha1.KeysJSONGzipKey]) {
		t.Error("compressed output differs between renderings")
	}
	t.Logf("10,000 keys: %d bytes with keys.json.gz (%d compressed)", c.size(), len(c.BinaryData[kmsv1alpha1.KeysJSONGzipKey]))

	if _, err := renderContent(manyKeys(30_000), nil); reasonOf(err) != kmsv1alpha1.ReasonTargetTooLarge {
		t.Fatalf("30,000 keys: err = %v, want TargetTooLarge", err)
	}
}

// ContentFits tells whether content of data and binaryData passes the size check that the
// operator makes before writing a ConfigMap; for the envtest suite.
func ContentFits(data map[string]string, binaryData map[string][]byte) bool {
	return content{Data: data, BinaryData: binaryData}.fits()
}

func TestRebuildSyncedRepairsOnlyWhatKeysJSONProves(t *testing.T) {
	synced, err := renderContent(manyKeys(3), nil)
	if err != nil {
		t.Fatal(err)
	}
	edited := func(edit func(c *content)) content {
		c := content{Data: maps.Clone(synced.Data)}
		edit(&c)
		return c
	}
	id := manyKeys(1)[0].ID
	entryEdited := edited(func(c *content) { c.Data[id] = "Disabled" })
	detailsEdited := edited(func(c *content) {
		c.Data[kmsv1alpha1.KeysJSONKey] = strings.Replace(c.Data[kmsv1alpha1.KeysJSONKey], "Enabled", "Disabled", 1)
	})
	for _, tc := range []struct {
		name   string
		stored content
		digest string
		ok     bool
	}{
		{"an edited entry, keys.json intact", entryEdited, synced.digest(), true},
		{"keys.json edited", detailsEdited, synced.digest(), false},
		{"written before the digest, intact", synced, "", true},
		{"written before the digest, edited", entryEdited, "", false},
	} {
		got, ok := rebuildSynced(tc.stored, tc.digest, nil)
		if ok != tc.ok || (ok && got.digest() != synced.digest()) {
			t.Errorf("%s: rebuildSynced = %v (digest match %v), want %v", tc.name, ok, got.digest() == synced.digest(), tc.ok)
		}
	}
}
