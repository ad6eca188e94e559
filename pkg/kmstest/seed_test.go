package kmstest

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

func TestSampleSeedFile(t *testing.T) {
	keys, err := ReadKeysFile(samplePath)
	if err != nil {
		t.Fatal(err)
	}
	states := map[kms.State]int{}
	for _, k := range keys {
		states[k.State]++
		if k.ID == "" || k.Alias == "" || k.Spec == "" || k.CreationDate.IsZero() {
			t.Errorf("incomplete key %+v", k)
		}
	}
	if len(keys) != 8 || states[kms.StateEnabled] != 5 || states[kms.StateDisabled] != 1 ||
		states[kms.StatePendingDeletion] != 1 || states[kms.StatePendingImport] != 1 {
		t.Errorf("%d keys, states %v", len(keys), states)
	}
	byAlias := map[string]kms.Key{}
	for _, k := range keys {
		byAlias[k.Alias] = k
	}
	if k := byAlias["search-cache"]; !k.ScheduledDeletionDate.Equal(time.Date(2025, 1, 20, 16, 0, 0, 0, time.UTC)) {
		t.Errorf("search-cache deletion date = %v", k.ScheduledDeletionDate)
	}
	if k := byAlias["kms/default"]; !k.Default || len(k.Tags) != 0 {
		t.Errorf("kms/default = %+v", k)
	}
	if k := byAlias["payments-api"]; k.Usage != "SIGN_VERIFY" || k.Tags["tier"] != "gold" {
		t.Errorf("payments-api = %+v", k)
	}
}

func TestReadKeysErrors(t *testing.T) {
	for name, body := range map[string]string{
		"not an array":    `{"id":"a"}`,
		"missing id":      `[{"alias":"a"}]`,
		"duplicate id":    `[{"id":"a"},{"id":"a"}]`,
		"unknown field":   `[{"id":"a","stat":"Enabled"}]`,
		"bad state":       `[{"id":"a","state":"Sleeping"}]`,
		"negative state":  `[{"id":"a","state":-1}]`,
		"bad date":        `[{"id":"a","creation_date":"yesterday"}]`,
		"trailing data":   `[{"id":"a"}] []`,
		"invalid JSON":    `[{"id":`,
		"tags not object": `[{"id":"a","tags":["x"]}]`,
	} {
		t.Run(name, func(t *testing.T) {
			if keys, err := ReadKeys(strings.NewReader(body)); err == nil {
				t.Errorf("no error, keys %+v", keys)
			}
		})
	}
	if _, err := ReadKeysFile(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("missing file: no error")
	}
	srv := New()
	if err := srv.LoadKeys(strings.NewReader(`[{"id":"a"},{"id":"a"}]`)); err == nil || srv.KeyCount() != 0 {
		t.Errorf("LoadKeys of a bad file: err %v, %d keys stored", err, srv.KeyCount())
	}
}

func TestReadKeysDefaultsAndStates(t *testing.T) {
	keys, err := ReadKeys(strings.NewReader(`[
		{"id":"a"},
		{"id":"b","state":"unknown"},
		{"id":"c","state":"3"},
		{"id":"d","state":9}
	]`))
	if err != nil {
		t.Fatal(err)
	}
	want := kms.Key{ID: "a", DomainID: DefaultDomainID, Realm: DefaultRealm, Spec: DefaultSpec, Usage: DefaultUsage,
		Origin: DefaultOrigin, Type: DefaultType, EnterpriseProjectID: DefaultEnterpriseProjectID,
		State: kms.StateEnabled, CreationDate: DefaultCreationDate}
	if !reflect.DeepEqual(keys[0], want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", keys[0], want)
	}
	for i, st := range []kms.State{kms.StateUnknown, kms.StateDisabled, kms.State(9)} {
		if keys[i+1].State != st {
			t.Errorf("key %s state %v, want %v", keys[i+1].ID, keys[i+1].State, st)
		}
	}
}

func TestWriteReadKeys(t *testing.T) {
	in := append(GenerateKeys(3, map[string]string{"env": "prod"}), kms.Key{
		ID: "z", Alias: "odd", State: kms.State(9), Default: true, RotationEnabled: true,
		ExpirationTime: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), Tags: map[string]string{"a": ""},
		CreationDate: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
	})
	var buf bytes.Buffer
	if err := WriteKeys(&buf, in); err != nil {
		t.Fatal(err)
	}
	out, err := ReadKeys(&buf)
	if err != nil {
		t.Fatal(err)
	}
	last := FillDefaults(in[3])
	last.State = kms.State(9)
	want := append(in[:3:3], last)
	if !reflect.DeepEqual(out, want) {
		t.Errorf("round trip:\n got %+v\nwant %+v", out, want)
	}

	path := filepath.Join(t.TempDir(), "keys.json")
	if err := os.WriteFile(path, []byte(`[{"id":"f1","tags":{"env":"prod"}}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := New()
	if err := srv.LoadKeysFile(path); err != nil || srv.KeyCount() != 1 {
		t.Errorf("LoadKeysFile: %v, %d keys", err, srv.KeyCount())
	}
}

func TestParseState(t *testing.T) {
	for in, want := range map[string]kms.State{
		"Enabled": kms.StateEnabled, "disabled": kms.StateDisabled, "PENDINGDELETION": kms.StatePendingDeletion,
		"PendingActivation": kms.StatePendingActivation, "PendingImport": kms.StatePendingImport,
		"Unknown": kms.StateUnknown, "2": kms.StateEnabled, " 5 ": kms.StatePendingImport,
	} {
		if got, err := ParseState(in); err != nil || got != want {
			t.Errorf("ParseState(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "on", "-2", "2.5"} {
		if _, err := ParseState(in); err == nil {
			t.Errorf("ParseState(%q): no error", in)
		}
	}
}

func TestGenerateKeys(t *testing.T) {
	a := GenerateKeys(1500, map[string]string{"env": "prod"})
	b := GenerateKeys(1500, map[string]string{"env": "prod"})
	c := GenerateKeys(10, map[string]string{"env": "staging"})
	if !reflect.DeepEqual(a, b) {
		t.Error("not deterministic")
	}
	seen := map[string]bool{}
	for i, k := range append(a, c...) {
		if seen[k.ID] || len(k.ID) != 36 || k.State != kms.StateEnabled {
			t.Fatalf("key %d: %+v (duplicate or malformed)", i, k)
		}
		seen[k.ID] = true
	}
	for i := 1; i < len(a); i++ {
		if a[i-1].ID >= a[i].ID {
			t.Fatalf("ids not in index order at %d", i)
		}
	}
	a[0].Tags["env"] = "changed"
	if a[1].Tags["env"] != "prod" {
		t.Error("keys share one tags map")
	}
	if len(GenerateKeys(0, nil)) != 0 || len(GenerateKeys(-1, nil)) != 0 {
		t.Error("n <= 0 must give no keys")
	}
}
