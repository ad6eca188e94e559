package controllers

import (
	"encoding/json"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// KeysJSONKey is the ConfigMap entry that holds every key as a JSON array sorted by id.
const KeysJSONKey = "keys.json"

// maxConfigMapDataBytes keeps the rendered data safely below the API server's 1 MiB object limit,
// leaving room for metadata and managed fields.
const maxConfigMapDataBytes = 1000 * 1024

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

// dataSize is the number of bytes data adds to a ConfigMap.
func dataSize(data map[string]string) int {
	n := 0
	for k, v := range data {
		n += len(k) + len(v)
	}
	return n
}
