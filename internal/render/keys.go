package render

import (
	"encoding/json"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// Key is one element of keys.json, and of the list that expressions see as keys. Field order
// is fixed, so the same keys give the same bytes.
type Key struct {
	ID           string            `json:"id"`
	Alias        string            `json:"alias"`
	State        string            `json:"state"`
	Spec         string            `json:"spec"`
	Usage        string            `json:"usage"`
	Origin       string            `json:"origin"`
	Tags         map[string]string `json:"tags"`
	CreationDate string            `json:"creationDate"`
}

// Keys turns the keys of a listing, sorted by id as the client returns them, into records.
func Keys(keys []kms.Key) []Key {
	out := make([]Key, len(keys))
	for i, k := range keys {
		tags := k.Tags
		if tags == nil {
			tags = map[string]string{}
		}
		out[i] = Key{ID: k.ID, Alias: k.Alias, State: k.State.String(), Spec: k.Spec, Usage: k.Usage, Origin: k.Origin, Tags: tags}
		if !k.CreationDate.IsZero() {
			out[i].CreationDate = k.CreationDate.UTC().Format(time.RFC3339)
		}
	}
	return out
}

// defaultData turns keys, sorted by id, into the default entries: one "<key_id>: <State>" entry
// per key, and keys.json. It is deterministic: encoding/json sorts map keys, and the records
// keep their order.
func defaultData(keys []Key) (map[string]string, error) {
	data := make(map[string]string, len(keys)+1)
	for _, k := range keys {
		if errs := validation.IsConfigMapKey(k.ID); len(errs) > 0 || k.ID == kmsv1alpha1.KeysJSONKey || k.ID == kmsv1alpha1.KeysJSONGzipKey {
			return nil, &KeyIDError{ID: k.ID}
		}
		data[k.ID] = k.State
	}
	encoded, err := json.Marshal(keys)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", kmsv1alpha1.KeysJSONKey, err)
	}
	data[kmsv1alpha1.KeysJSONKey] = string(encoded)
	return data, nil
}
