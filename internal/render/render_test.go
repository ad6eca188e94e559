package render

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

func TestRenderDataIsDeterministic(t *testing.T) {
	keys := []kms.Key{
		{ID: "a", Alias: "one", State: kms.StateEnabled, Tags: map[string]string{"z": "1", "a": "2", "m": "3"},
			CreationDate: time.Unix(1521449277, 0)},
		{ID: "b", State: kms.State(9)},
	}
	first, err := defaultData(Keys(keys))
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		again, err := defaultData(Keys(keys))
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
		var keyID *KeyIDError
		if _, err := Render(context.Background(), Keys([]kms.Key{{ID: id}}), nil); !errors.As(err, &keyID) {
			t.Errorf("renderData accepted key id %q", id)
		}
	}
}

func TestRenderCompressesRatherThanDropsKeys(t *testing.T) {
	small, err := Render(context.Background(), manyKeys(100), nil)
	if err != nil || len(small.BinaryData) != 0 || small.Data[kmsv1alpha1.KeysJSONKey] == "" {
		t.Fatalf("100 keys: err=%v, binary entries %d; want plain keys.json", err, len(small.BinaryData))
	}

	keys := manyKeys(10_000)
	c, err := Render(context.Background(), keys, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, plain := c.Data[kmsv1alpha1.KeysJSONKey]; plain || len(c.BinaryData[kmsv1alpha1.KeysJSONGzipKey]) == 0 {
		t.Fatal("10,000 keys: want keys.json.gz instead of keys.json")
	}
	if len(c.Data) != len(keys) || c.Size() > MaxDataBytes || c.StoredSize() > MaxStoredBytes {
		t.Fatalf("10,000 keys: %d entries, %d bytes", len(c.Data), c.Size())
	}
	zr, err := gzip.NewReader(bytes.NewReader(c.BinaryData[kmsv1alpha1.KeysJSONGzipKey]))
	if err != nil {
		t.Fatal(err)
	}
	var records []Key
	if err := json.NewDecoder(zr).Decode(&records); err != nil || len(records) != len(keys) || records[9999].ID != keys[9999].ID {
		t.Fatalf("keys.json.gz decodes to %d records, err %v", len(records), err)
	}
	again, _ := Render(context.Background(), keys, nil)
	if !bytes.Equal(again.BinaryData[kmsv1alpha1.KeysJSONGzipKey], c.BinaryData[kmsv1alpha1.KeysJSONGzipKey]) {
		t.Error("compressed output differs between renderings")
	}
	t.Logf("10,000 keys: %d bytes with keys.json.gz (%d compressed)", c.Size(), len(c.BinaryData[kmsv1alpha1.KeysJSONGzipKey]))

	if _, err := Render(context.Background(), manyKeys(30_000), nil); !errors.As(err, new(*TooLargeError)) {
		t.Fatalf("30,000 keys: err = %v, want TargetTooLarge", err)
	}
}
