package controllers

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

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

func TestCredentialsFromSecret(t *testing.T) {
	cases := []struct {
		name    string
		data    map[string]string
		want    kms.Credentials
		wantErr string
	}{
		{name: "token", data: map[string]string{"token": "tok\n"}, want: kms.Credentials{Token: "tok"}},
		{name: "aksk", data: map[string]string{"accessKey": "ak", "secretKey": "sk"}, want: kms.Credentials{AccessKey: "ak", SecretKey: "sk"}},
		{name: "temporary aksk", data: map[string]string{"accessKey": "ak", "secretKey": "sk", "securityToken": "st"},
			want: kms.Credentials{AccessKey: "ak", SecretKey: "sk", SecurityToken: "st"}},
		{name: "empty", data: map[string]string{}, wantErr: "neither"},
		{name: "empty value", data: map[string]string{"token": " \n"}, wantErr: `"token" is empty`},
		{name: "only access key", data: map[string]string{"accessKey": "ak-1234"}, wantErr: `"secretKey" is missing`},
		{name: "only secret key", data: map[string]string{"secretKey": "sk-1234"}, wantErr: `"accessKey" is missing`},
		{name: "only security token", data: map[string]string{"securityToken": "st"}, wantErr: `"accessKey" is missing`},
		{name: "both kinds", data: map[string]string{"token": "tok-1234", "accessKey": "ak-1234", "secretKey": "sk-1234"}, wantErr: "both"},
		{name: "not UTF-8", data: map[string]string{"token": "\xff\xfe"}, wantErr: "UTF-8"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &corev1.Secret{Data: map[string][]byte{}}
			for k, v := range tc.data {
				s.Data[k] = []byte(v)
			}
			got, err := credentialsFromSecret(s)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				for _, v := range tc.data {
					if strings.TrimSpace(v) != "" && strings.Contains(err.Error(), v) {
						t.Fatalf("error %q reveals a secret value", err)
					}
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestDiffKeys(t *testing.T) {
	prev := &content{Data: map[string]string{"a": "Enabled", "b": "Enabled", "c": "Enabled", kmsv1alpha1.KeysJSONKey: "[1]"}}
	cur := content{Data: map[string]string{"a": "Enabled", "b": "Disabled", "d": "PendingDeletion", kmsv1alpha1.KeysJSONKey: "[2]"}}
	d := diffKeys(prev, cur, nil)
	if d.added != 1 || d.removed != 1 || d.changed != 1 || !d.detailsChanged {
		t.Fatalf("diff = %+v", d)
	}
	if got := d.movedTo["Disabled"]; len(got) != 1 || got[0] != "b" {
		t.Errorf("movedTo[Disabled] = %v", got)
	}
	if got := d.movedTo["PendingDeletion"]; len(got) != 0 {
		t.Errorf("a new key counted as moved: movedTo[PendingDeletion] = %v", got)
	}
	if !diffKeys(&cur, cur, nil).empty() {
		t.Error("identical data gave a non-empty diff")
	}
}

// TestSchemaFollowsKMSRules keeps the CRD markers in step with internal/kms/rules.go, where the
// API's limits are defined once.
func TestSchemaFollowsKMSRules(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "config", "crd", "bases", "kms.keysync.dev_kmskeyselectors.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.Unmarshal(raw, crd); err != nil {
		t.Fatal(err)
	}
	spec := crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"]
	tags := spec.Properties["tags"]
	tagKey := tags.Items.Schema.Properties["key"]
	tagValue := tags.Items.Schema.Properties["values"].Items.Schema
	match := spec.Properties["matches"].Items.Schema.Properties["value"]
	page := spec.Properties["pageSize"]

	checks := []struct {
		name      string
		got, want int64
	}{
		{"tags maxItems", *tags.MaxItems, kms.MaxTags},
		{"tag key maxLength", *tagKey.MaxLength, kms.MaxTagKeyLength},
		{"tag value maxLength", *tagValue.MaxLength, kms.MaxTagValueLength},
		{"match value maxLength", *match.MaxLength, kms.MaxMatchValueLength},
		{"pageSize maximum", int64(*page.Maximum), kms.MaxPageSize},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d in the CRD, %d in internal/kms/rules.go", c.name, c.got, c.want)
		}
	}
	if tagKey.Pattern != kms.TagTextPattern || tagValue.Pattern != kms.TagTextPattern {
		t.Errorf("tag patterns %q and %q differ from kms.TagTextPattern %q", tagKey.Pattern, tagValue.Pattern, kms.TagTextPattern)
	}
	enum := spec.Properties["matches"].Items.Schema.Properties["key"].Enum
	if len(enum) != 1 || string(enum[0].Raw) != `"`+string(kms.MatchResourceName)+`"` {
		t.Errorf("match key enum = %v, want only %q", enum, kms.MatchResourceName)
	}
}

func TestNextSlotAlignsIdenticalQuestionsAndSpreadsOthers(t *testing.T) {
	interval := 5 * time.Minute
	for _, now := range []time.Time{time.Unix(1_700_000_000, 0), time.Unix(1_700_000_123, 456)} {
		for _, phase := range []uint64{0, 1, 299_999_999_999, 1 << 63} {
			slot := nextSlot(now.Add(interval/2), interval, phase)
			if slot.Before(now.Add(interval/2)) || !slot.Before(now.Add(interval*3/2)) {
				t.Errorf("nextSlot(%v, phase %d) = %v, want within [now+%v, now+%v)", now, phase, slot, interval/2, interval*3/2)
			}
			if got, want := slot.UnixNano()%int64(interval), int64(phase%uint64(interval)); got != ceilSecond(time.Unix(0, want)).UnixNano()%int64(interval) {
				t.Errorf("slot offset = %d, want the phase %d rounded up to a second", got, want)
			}
		}
	}
	// Two selectors with the same question that synced 40s apart refresh together.
	a := nextSlot(time.Unix(1_700_000_000, 0), interval, 42)
	b := nextSlot(time.Unix(1_700_000_040, 0), interval, 42)
	// A scheduled refresh served late still moves on to the next slot, with the others.
	if got, want := nextRefresh(a.Add(interval-time.Second), interval, 42, true), a.Add(interval); !got.Equal(want) {
		t.Errorf("late refresh scheduled at %v, want the next slot %v", got, want)
	}
	// A sync the user asked for waits at least half an interval.
	if got := nextRefresh(a, interval, 42, false); got.Sub(a) < interval/2 {
		t.Errorf("requested sync at %v scheduled its refresh at %v, less than half an interval later", a, got)
	}
	if !a.Equal(b) {
		t.Errorf("same phase gave %v and %v", a, b)
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

func TestMemoryCatchesUpOnlyACacheThatHasNotSeenTheWrite(t *testing.T) {
	var m memory
	sel := &kmsv1alpha1.KmsKeySelector{}
	sel.Namespace, sel.Name, sel.UID, sel.ResourceVersion = "ns", "sel", "uid-1", "11"
	sel.Status.ObservedGeneration = 2
	m.statusWritten(sel, "10")

	stale := sel.DeepCopy()
	stale.ResourceVersion, stale.Status = "10", kmsv1alpha1.KmsKeySelectorStatus{ObservedGeneration: 1}
	m.catchUp(stale)
	if stale.Status.ObservedGeneration != 2 {
		t.Errorf("a cache still at the version written over kept its old status")
	}
	for name, other := range map[string]func(*kmsv1alpha1.KmsKeySelector){
		"a later version":      func(s *kmsv1alpha1.KmsKeySelector) { s.ResourceVersion = "12" },
		"a recreated selector": func(s *kmsv1alpha1.KmsKeySelector) { s.ResourceVersion, s.UID = "10", "uid-2" },
		"the version it wrote": func(s *kmsv1alpha1.KmsKeySelector) { s.ResourceVersion = "11" },
	} {
		cur := sel.DeepCopy()
		cur.Status = kmsv1alpha1.KmsKeySelectorStatus{ObservedGeneration: 7}
		other(cur)
		m.catchUp(cur)
		if cur.Status.ObservedGeneration != 7 {
			t.Errorf("%s: the cached status was replaced", name)
		}
	}
}

func TestNextListingReadsTheScheduleFromTheStatus(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(d)} }
	ready := func(status metav1.ConditionStatus, reason string) []metav1.Condition {
		return []metav1.Condition{{Type: kmsv1alpha1.ConditionReady, Status: status, Reason: reason}}
	}
	cases := []struct {
		name   string
		mutate func(*kmsv1alpha1.KmsKeySelector)
		due    bool
		wait   time.Duration
	}{
		{"never synced", func(s *kmsv1alpha1.KmsKeySelector) { s.Status = kmsv1alpha1.KmsKeySelectorStatus{} }, true, 0},
		{"synced, refresh ahead", func(*kmsv1alpha1.KmsKeySelector) {}, false, 40 * time.Minute},
		{"refresh time come", func(s *kmsv1alpha1.KmsKeySelector) { s.Status.NextSyncTime = at(-time.Second) }, true, 0},
		{"spec changed", func(s *kmsv1alpha1.KmsKeySelector) { s.Generation = 3 }, true, 0},
		{"force-sync asked", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Annotations = map[string]string{kmsv1alpha1.ForceSyncAnnotation: "now"}
		}, true, 0},
		{"retry ahead", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Status.Conditions = ready(metav1.ConditionFalse, kmsv1alpha1.ReasonKMSRequestFailed)
			s.Status.NextSyncTime = at(5 * time.Second)
		}, false, 5 * time.Second},
		{"failed for good", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Status.Conditions = ready(metav1.ConditionFalse, kmsv1alpha1.ReasonInvalidSpec)
			s.Status.NextSyncTime = nil
		}, false, 0},
		{"written before nextSyncTime existed", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Status.NextSyncTime, s.Status.LastSyncTime = nil, at(-20*time.Minute)
		}, false, 10 * time.Minute},
	}
	for _, tc := range cases {
		sel := &kmsv1alpha1.KmsKeySelector{}
		sel.Generation = 2
		sel.Spec.RefreshInterval = &metav1.Duration{Duration: 30 * time.Minute}
		sel.Status = kmsv1alpha1.KmsKeySelectorStatus{
			ObservedGeneration: 2, Conditions: ready(metav1.ConditionTrue, kmsv1alpha1.ReasonSynced),
			LastSyncTime: at(-time.Minute), NextSyncTime: at(40 * time.Minute),
		}
		tc.mutate(sel)
		if due, wait := nextListing(sel, now); due != tc.due || wait != tc.wait {
			t.Errorf("%s: nextListing = %v, %v; want %v, %v", tc.name, due, wait, tc.due, tc.wait)
		}
	}
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

func TestListingSinceTakesOnlyNewListingsForAForceSync(t *testing.T) {
	r := &KmsKeySelectorReconciler{}
	now := time.Unix(1_700_000_000, 0)
	sel := &kmsv1alpha1.KmsKeySelector{}
	sel.Generation = 1
	if notBefore, fresh := r.listingSince(sel, now); fresh || !notBefore.IsZero() {
		t.Errorf("a new selector: listingSince = %v, %v; want any recent listing", notBefore, fresh)
	}
	// Asked for a force-sync before its first status was written: a listing from before the
	// request must not answer it.
	sel.Annotations = map[string]string{kmsv1alpha1.ForceSyncAnnotation: "1"}
	if notBefore, fresh := r.listingSince(sel, now); !fresh || !notBefore.Equal(now) {
		t.Errorf("a new selector asking for a force-sync: listingSince = %v, %v; want only listings since %v", notBefore, fresh, now)
	}
	sel.Status.ObservedGeneration, sel.Status.LastHandledForceSync = 1, "1"
	sel.Status.NextSyncTime = &metav1.Time{Time: now.Add(-time.Second)}
	if notBefore, fresh := r.listingSince(sel, now); fresh || !notBefore.Equal(now.Add(-time.Second)) {
		t.Errorf("a scheduled refresh: listingSince = %v, %v; want listings since its slot", notBefore, fresh)
	}
	sel.Status.ConsecutiveFailures = 1
	if notBefore, fresh := r.listingSince(sel, now); !fresh || !notBefore.IsZero() {
		t.Errorf("a retry: listingSince = %v, %v; want a new listing", notBefore, fresh)
	}
}
