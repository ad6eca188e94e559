package testkit

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// CredentialsSecretName is the Secret that the selectors Selector builds read their
// credentials from.
const CredentialsSecretName = "kms-credentials"

// Namespace returns a namespace to create.
func Namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

// Secret returns a Secret to create, holding data.
func Secret(namespace, name string, data map[string]string) *corev1.Secret {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}, Data: map[string][]byte{}}
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	return s
}

// TokenSecret returns a credentials Secret holding an IAM token.
func TokenSecret(namespace, name, token string) *corev1.Secret {
	return Secret(namespace, name, map[string]string{kmsv1alpha1.SecretToken: token})
}

// Selector returns a selector to create: it lists every key of the emulator's default project at
// endpoint, with the credentials of CredentialsSecretName; mutate adjusts it. It sets
// spec.allKeys unless mutate chose keys by tags or matches.
func Selector(namespace, name, endpoint string, mutate ...func(*kmsv1alpha1.KmsKeySelector)) *kmsv1alpha1.KmsKeySelector {
	sel := &kmsv1alpha1.KmsKeySelector{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: kmsv1alpha1.KmsKeySelectorSpec{
			Provider: &kmsv1alpha1.ProviderSpec{
				KMSLocation:          kmsv1alpha1.KMSLocation{ProjectID: kmstest.DefaultProjectID, Endpoint: endpoint},
				CredentialsSecretRef: &kmsv1alpha1.SecretReference{Name: CredentialsSecretName},
			},
		},
	}
	for _, m := range mutate {
		m(sel)
	}
	sel.Spec.AllKeys = len(sel.Spec.Tags) == 0 && len(sel.Spec.Matches) == 0
	return sel
}

// Tag is one spec.tags entry: keys carrying key with one of values (any value when none).
func Tag(key string, values ...string) kmsv1alpha1.TagSelector {
	return kmsv1alpha1.TagSelector{Key: key, Values: values}
}

// WithTags sets spec.tags.
func WithTags(tags ...kmsv1alpha1.TagSelector) func(*kmsv1alpha1.KmsKeySelector) {
	return func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.Tags = tags }
}

// WithRefreshInterval sets spec.refreshInterval.
func WithRefreshInterval(d time.Duration) func(*kmsv1alpha1.KmsKeySelector) {
	return func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.RefreshInterval = &metav1.Duration{Duration: d} }
}

// WithPageSize sets spec.pageSize.
func WithPageSize(n int32) func(*kmsv1alpha1.KmsKeySelector) {
	return func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.PageSize = ptr.To(n) }
}

// WithCredentialsSecret sets spec.provider.credentialsSecretRef.name.
func WithCredentialsSecret(name string) func(*kmsv1alpha1.KmsKeySelector) {
	return func(s *kmsv1alpha1.KmsKeySelector) {
		s.Spec.Provider.CredentialsSecretRef = &kmsv1alpha1.SecretReference{Name: name}
	}
}

// Key returns a KMS key as the emulator stores it, with the spec, usage and origin of an
// ordinary symmetric key.
func Key(id, alias string, state kmstest.State, tags map[string]string) kmstest.Key {
	return kmstest.Key{ID: id, Alias: alias, State: state, Tags: tags, Spec: "AES_256", Usage: "ENCRYPT_DECRYPT", Origin: "kms"}
}

// StatesOf returns the "<id>: <State>" entries a ConfigMap holds for keys.
func StatesOf(keys ...kmstest.Key) map[string]string {
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		out[k.ID] = k.State.String()
	}
	return out
}

// KeyStates returns the "<id>: <State>" entries of a ConfigMap's data: all but keys.json.
func KeyStates(data map[string]string) map[string]string {
	out := make(map[string]string, len(data))
	for k, v := range data {
		if k != kmsv1alpha1.KeysJSONKey {
			out[k] = v
		}
	}
	return out
}

// KeysJSON decodes the keys.json entry of a ConfigMap, or its gzip-compressed form in
// binaryData.
func KeysJSON(cm *corev1.ConfigMap) ([]map[string]any, error) {
	raw := []byte(cm.Data[kmsv1alpha1.KeysJSONKey])
	if gz, ok := cm.BinaryData[kmsv1alpha1.KeysJSONGzipKey]; ok {
		r, err := gzip.NewReader(bytes.NewReader(gz))
		if err != nil {
			return nil, fmt.Errorf("decompressing %s: %w", kmsv1alpha1.KeysJSONGzipKey, err)
		}
		if raw, err = io.ReadAll(r); err != nil {
			return nil, fmt.Errorf("decompressing %s: %w", kmsv1alpha1.KeysJSONGzipKey, err)
		}
	}
	var out []map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("decoding keys.json of ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
	}
	return out, nil
}

// ReadyCondition returns the selector's Ready condition, or nil.
func ReadyCondition(sel *kmsv1alpha1.KmsKeySelector) *metav1.Condition {
	return meta.FindStatusCondition(sel.Status.Conditions, kmsv1alpha1.ConditionReady)
}

// EventsAbout returns the events of list about the selector, in list order.
func EventsAbout(list []eventsv1.Event, sel *kmsv1alpha1.KmsKeySelector) []eventsv1.Event {
	return slices.DeleteFunc(slices.Clone(list), func(e eventsv1.Event) bool {
		return e.Regarding.Kind != "KmsKeySelector" || e.Regarding.Name != sel.Name || e.Regarding.Namespace != sel.Namespace
	})
}

// Reasons returns the reasons of events, sorted, each as many times as it occurred: an event
// that stands for a series counts once per occurrence.
func Reasons(events []eventsv1.Event) []string {
	var out []string
	for _, e := range events {
		n := 1
		if e.Series != nil {
			n = int(e.Series.Count)
		}
		for range n {
			out = append(out, e.Reason)
		}
	}
	sort.Strings(out)
	return out
}
