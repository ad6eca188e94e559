package controllers

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/utils/ptr"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/render"
)

func key(id string, state kms.State) kms.Key {
	return kms.Key{ID: id, Alias: "alias-" + id, State: state}
}

func TestDiffKeys(t *testing.T) {
	prev := listedKeys([]kms.Key{key("a", kms.StateEnabled), key("b", kms.StateEnabled), key("c", kms.StateEnabled)}, nil)
	cur := listedKeys([]kms.Key{key("a", kms.StateEnabled), key("b", kms.StateDisabled), key("d", kms.StatePendingDeletion)}, nil)
	d := diffKeys(prev, cur)
	if d.added != 1 || d.removed != 1 || d.changed != 1 || !d.detailsChanged {
		t.Fatalf("diff = %+v", d)
	}
	if got := d.movedTo["Disabled"]; len(got) != 1 || got[0] != "b" {
		t.Errorf("movedTo[Disabled] = %v", got)
	}
	if got := d.movedTo["PendingDeletion"]; len(got) != 0 {
		t.Errorf("a new key counted as moved: movedTo[PendingDeletion] = %v", got)
	}
	if got := d.String(); got != "Keys changed: 1 added, 1 removed, 1 changed state" {
		t.Errorf("String() = %q", got)
	}
	if !diffKeys(cur, cur).empty() {
		t.Error("identical listings gave a non-empty diff")
	}
}

func TestDiffKeysNamesOnlyWhatChanged(t *testing.T) {
	before := listedKeys([]kms.Key{key("a", kms.StateEnabled)}, nil)
	renamed := key("a", kms.StateEnabled)
	renamed.Alias = "renamed"
	d := diffKeys(before, listedKeys([]kms.Key{renamed}, nil))
	if d.empty() || strings.Contains(d.String(), "0 ") {
		t.Errorf("an alias change gave %+v, %q", d, d.String())
	}
}

// Expressions that replace the default entries leave no keys in the ConfigMap: what changed is
// read from the status of the last sync instead.
func TestPreviouslyListedFallsBackToTheStatus(t *testing.T) {
	sel := &kmsv1alpha1.KmsKeySelector{}
	keys := []kms.Key{key("a", kms.StateEnabled), key("b", kms.StateEnabled)}
	setSynced(sel, keys, 1, "digest", sel.CreationTimestamp.Time)
	replaced := &render.Content{Data: map[string]string{"PAYMENTS_DB_KEY_ID": "a"}}

	d := diffKeys(previouslyListed(sel, replaced), listedKeys([]kms.Key{key("a", kms.StateEnabled), key("b", kms.StateDisabled)}, nil))
	if d.changed != 1 || d.added != 0 || d.removed != 0 || !slices.Equal(d.movedTo["Disabled"], []string{"b"}) {
		t.Errorf("diff = %+v, want b moved to Disabled", d)
	}
	if !diffKeys(previouslyListed(sel, replaced), listedKeys(keys, nil)).empty() {
		t.Error("an unchanged listing gave a non-empty diff")
	}
	never := &kmsv1alpha1.KmsKeySelector{}
	if d := diffKeys(previouslyListed(never, nil), listedKeys(keys, nil)); d.added != 2 || d.String() != "Keys changed: 2 added" {
		t.Errorf("first sync: diff = %+v, %q", d, d.String())
	}
}

// The status lists the first 100 keys: after them, keys are compared by number.
func TestPreviouslyListedFromAPartialStatus(t *testing.T) {
	var keys []kms.Key
	for i := range 150 {
		keys = append(keys, key(fmt.Sprintf("k%03d", i), kms.StateEnabled))
	}
	sel := &kmsv1alpha1.KmsKeySelector{}
	setSynced(sel, keys, 1, "digest", sel.CreationTimestamp.Time)
	if len(sel.Status.Keys) != maxStatusKeys || ptr.Deref(sel.Status.KeyCount, 0) != 150 {
		t.Fatalf("status lists %d of %d keys", len(sel.Status.Keys), ptr.Deref(sel.Status.KeyCount, 0))
	}
	prev := previouslyListed(sel, nil)

	if d := diffKeys(prev, listedKeys(keys, nil)); !d.empty() {
		t.Errorf("an unchanged listing gave %+v", d)
	}
	changed := slices.Clone(keys)
	changed[10].State = kms.StateDisabled
	changed = append(changed[:5], changed[6:]...)                                           // one of the first 100 removed
	changed = append(changed, key("k200", kms.StateEnabled), key("k201", kms.StateEnabled)) // two after them added
	d := diffKeys(prev, listedKeys(changed, nil))
	if d.added != 2 || d.removed != 1 || d.changed != 1 {
		t.Errorf("diff = %+v, want 2 added, 1 removed, 1 changed", d)
	}
}

// lastSyncTime moves with a listing that changed the status, and only then, so that an unchanged
// refresh has nothing to write.
func TestSetSyncedMovesLastSyncTimeOnlyWithAChange(t *testing.T) {
	first := time.Unix(1_700_000_000, 0)
	sel := &kmsv1alpha1.KmsKeySelector{}
	sel.Generation = 1
	keys := []kms.Key{key("a", kms.StateEnabled)}
	setSynced(sel, keys, 1, "digest-1", first)
	written := sel.Status.DeepCopy()
	if !written.LastSyncTime.Time.Equal(first) || written.NextSyncTime != nil {
		t.Fatalf("first sync: lastSyncTime %v, nextSyncTime %v; want %v and none", written.LastSyncTime, written.NextSyncTime, first)
	}
	setSynced(sel, keys, 1, "digest-1", first.Add(time.Hour))
	if !equality.Semantic.DeepEqual(written, &sel.Status) {
		t.Errorf("an unchanged listing changed the status from %+v to %+v", written, sel.Status)
	}
	setSynced(sel, []kms.Key{key("a", kms.StateDisabled)}, 1, "digest-2", first.Add(2*time.Hour))
	if !sel.Status.LastSyncTime.Time.Equal(first.Add(2 * time.Hour)) {
		t.Errorf("a listing that changed a key's state left lastSyncTime at %v", sel.Status.LastSyncTime)
	}
}

func TestSyncedMessage(t *testing.T) {
	sel := &kmsv1alpha1.KmsKeySelector{}
	sel.Name = "payments"
	for _, c := range []struct {
		keys, entries int
		allKeys       bool
		want          string
	}{
		{3, 4, false, `3 keys matched; ConfigMap "payments" has 4 entries`},
		{4, 1, false, `4 keys matched; ConfigMap "payments" has 1 entry`},
		{1, 2, false, `1 key matched; ConfigMap "payments" has 2 entries`},
		{0, 1, false, `No key matched spec.tags and spec.matches; tag keys and values, and match values, are case-sensitive: check them against the keys' tags and aliases; ConfigMap "payments" has 1 entry`},
		{0, 1, true, `No key matched: the project has no keys; ConfigMap "payments" has 1 entry`},
	} {
		sel.Spec.AllKeys = c.allKeys
		if got := syncedMessage(sel, c.keys, c.entries); got != c.want {
			t.Errorf("%d keys, %d entries: %q, want %q", c.keys, c.entries, got, c.want)
		}
	}
}

// A selector stored before the schema required tags, matches or allKeys lists nothing.
func TestListRequestRefusesASelectorThatChoosesNoKeys(t *testing.T) {
	sel := &kmsv1alpha1.KmsKeySelector{}
	_, err := (&KmsKeySelectorReconciler{}).listRequest(t.Context(), situation{sel: sel}, provider{})
	f := asFailure(err)
	if f == nil || f.reason != kmsv1alpha1.ReasonInvalidSpec || !strings.Contains(err.Error(), "spec.allKeys: true") {
		t.Fatalf("err = %v, want InvalidSpec naming spec.allKeys", err)
	}
}

func TestListedKeysTakesTheDetailsTheSyncRendered(t *testing.T) {
	keys := []kms.Key{key("a", kms.StateEnabled), {ID: "b", State: kms.StateDisabled, Tags: map[string]string{"env": "prod"}}}
	rendered, err := render.Render(t.Context(), render.Keys(keys), nil)
	if err != nil {
		t.Fatal(err)
	}
	reused, own := listedKeys(keys, &rendered), listedKeys(keys, nil)
	if !reflect.DeepEqual(reused, own) || own.details == "" {
		t.Errorf("the details of the rendered content differ from those rendered again:\n%+v\n%+v", reused, own)
	}
}
