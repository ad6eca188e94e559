package controllers

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/metrics"
	"github.com/kms-key-sync/kms-key-sync/internal/render"
)

// maxStatusKeys is how many keys the status lists; KeyCount always gives the full number.
const maxStatusKeys = 100

// setSynced records a successful sync of keys, sorted by id, listed at now, into a ConfigMap of
// entries entries holding the content of digest. lastSyncTime moves only when the listing
// changed something else in the status, so that an unchanged refresh writes nothing; the next
// refresh is not written, as it follows from the selector's slot.
func setSynced(sel *kmsv1alpha1.KmsKeySelector, keys []kms.Key, entries int, digest string, now time.Time) {
	before := sel.Status.DeepCopy()
	defer func() {
		if before.LastSyncTime == nil || !equality.Semantic.DeepEqual(before, &sel.Status) {
			sel.Status.LastSyncTime = &metav1.Time{Time: now.Truncate(time.Second)}
		}
	}()
	st := &sel.Status
	st.NextSyncTime = nil
	st.ContentDigest = digest
	st.ConsecutiveFailures = 0
	st.LastHandledForceSync = sel.Annotations[kmsv1alpha1.ForceSyncAnnotation]
	st.ConfigMapName = targetName(sel)
	st.KeyCount = ptr.To(int32(len(keys)))
	counts := kmsv1alpha1.StateCounts{}
	st.Keys = make([]kmsv1alpha1.KeyStatus, 0, min(len(keys), maxStatusKeys))
	for i, k := range keys {
		countState(&counts, k.State)
		if i < maxStatusKeys {
			st.Keys = append(st.Keys, kmsv1alpha1.KeyStatus{ID: k.ID, Alias: k.Alias, State: k.State.String()})
		}
	}
	st.StateCounts = &counts
	setReady(sel, metav1.ConditionTrue, kmsv1alpha1.ReasonSynced, syncedMessage(sel, len(keys), entries))
}

// syncedMessage says how many keys matched and how many entries the ConfigMap holds, which
// expressions decide; for no match, what to check.
func syncedMessage(sel *kmsv1alpha1.KmsKeySelector, keys, entries int) string {
	written := fmt.Sprintf("ConfigMap %q has %s", targetName(sel), plural(entries, "entry", "entries"))
	switch {
	case keys > 0:
		return fmt.Sprintf("%s matched; %s", plural(keys, "key", "keys"), written)
	case sel.Spec.AllKeys:
		return "No key matched: the project has no keys; " + written
	}
	return "No key matched spec.tags and spec.matches; tag keys and values, and match values, are case-sensitive: check them against the keys' tags and aliases; " + written
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// recordSynced records in the metrics a successful sync of keys listed at listed.
func recordSynced(sel *kmsv1alpha1.KmsKeySelector, listed time.Time) {
	metrics.Syncs.WithLabelValues(kmsv1alpha1.ReasonSynced).Inc()
	metrics.SelectorReady.WithLabelValues(sel.Namespace, sel.Name).Set(1)
	metrics.SetSelectorReason(sel.Namespace, sel.Name, kmsv1alpha1.ReasonSynced)
	metrics.SelectorLastSync.WithLabelValues(sel.Namespace, sel.Name).Set(float64(listed.Unix()))
	metrics.SelectorRefreshInterval.WithLabelValues(sel.Namespace, sel.Name).Set(refreshInterval(sel).Seconds())
	c := sel.Status.StateCounts
	for state, n := range map[kms.State]int32{
		kms.StatePendingActivation: c.PendingActivation, kms.StateEnabled: c.Enabled, kms.StateDisabled: c.Disabled,
		kms.StatePendingDeletion: c.PendingDeletion, kms.StatePendingImport: c.PendingImport, kms.StateUnknown: c.Unknown,
	} {
		metrics.Keys.WithLabelValues(sel.Namespace, sel.Name, state.String()).Set(float64(n))
	}
}

func recordFailed(sel *kmsv1alpha1.KmsKeySelector, reason string) {
	metrics.Syncs.WithLabelValues(reason).Inc()
	metrics.SelectorReady.WithLabelValues(sel.Namespace, sel.Name).Set(0)
	metrics.SetSelectorReason(sel.Namespace, sel.Name, reason)
	metrics.SelectorRefreshInterval.WithLabelValues(sel.Namespace, sel.Name).Set(refreshInterval(sel).Seconds())
}

func countState(c *kmsv1alpha1.StateCounts, s kms.State) {
	switch s {
	case kms.StatePendingActivation:
		c.PendingActivation++
	case kms.StateEnabled:
		c.Enabled++
	case kms.StateDisabled:
		c.Disabled++
	case kms.StatePendingDeletion:
		c.PendingDeletion++
	case kms.StatePendingImport:
		c.PendingImport++
	default:
		c.Unknown++
	}
}

// syncedKeys is what one sync listed, for telling what the next one changed: each key's state by
// id, and the details of every key (keys.json, as the default entries hold it) when known.
type syncedKeys struct {
	states  map[string]string
	details string
	// total is the number of keys. When it is larger than len(states), states holds only the
	// first keys by id, up to last.
	total int
	last  string
}

// listedKeys is what a sync of keys, sorted by id, listed. defaults is their content rendered
// without expressions, if the sync rendered it; else it is rendered here.
func listedKeys(keys []kms.Key, defaults *render.Content) syncedKeys {
	k := syncedKeys{states: make(map[string]string, len(keys)), total: len(keys)}
	for _, key := range keys {
		k.states[key.ID] = key.State.String()
	}
	// Rendered without expressions, as the details of the previous sync are read back.
	if defaults == nil {
		if c, err := render.Render(context.Background(), render.Keys(keys), nil); err == nil {
			defaults = &c
		}
	}
	if defaults != nil {
		k.details = defaults.Details()
	}
	return k
}

// previouslyListed is what the last sync listed: the keys.json that the ConfigMap held, or else,
// when expressions replaced the default entries or the ConfigMap is gone, the keys of the status,
// which lists the first 100.
func previouslyListed(sel *kmsv1alpha1.KmsKeySelector, stored *render.Content) syncedKeys {
	if stored != nil {
		if c, ok := render.Rebuild(context.Background(), *stored, nil); ok {
			k := syncedKeys{states: map[string]string{}, details: c.Details()}
			for id, state := range c.Data {
				if id != kmsv1alpha1.KeysJSONKey {
					k.states[id] = state
				}
			}
			k.total = len(k.states)
			return k
		}
	}
	st := sel.Status
	k := syncedKeys{states: make(map[string]string, len(st.Keys)), total: int(ptr.Deref(st.KeyCount, 0))}
	for _, key := range st.Keys {
		k.states[key.ID] = key.State
		k.last = max(k.last, key.ID)
	}
	k.total = max(k.total, len(k.states))
	return k
}

// keyDiff is what changed between two syncs, key by key.
type keyDiff struct {
	added, removed, changed int
	// movedTo lists, by new state, the ids of keys whose state changed.
	movedTo map[string][]string
	// detailsChanged is set when an alias, tag or other detail of a key changed.
	detailsChanged bool
}

// diffKeys compares two syncs. When previous knows only its first keys, the keys after them are
// compared by number: their state changes are not seen.
func diffKeys(previous, current syncedKeys) keyDiff {
	d := keyDiff{movedTo: map[string][]string{}}
	complete := previous.total == len(previous.states)
	beyond := 0
	for id, state := range current.states {
		old, ok := previous.states[id]
		switch {
		case !ok && !complete && id > previous.last:
			beyond++
		case !ok:
			d.added++
		case old != state:
			d.changed++
			d.movedTo[state] = append(d.movedTo[state], id)
		}
	}
	for id := range previous.states {
		if _, ok := current.states[id]; !ok {
			d.removed++
		}
	}
	if net := beyond - (previous.total - len(previous.states)); net > 0 {
		d.added += net
	} else {
		d.removed -= net
	}
	for _, ids := range d.movedTo {
		sort.Strings(ids)
	}
	d.detailsChanged = previous.details != "" && current.details != "" && previous.details != current.details
	return d
}

func (d keyDiff) empty() bool {
	return d.added == 0 && d.removed == 0 && d.changed == 0 && !d.detailsChanged
}

// String names what changed, and nothing that did not.
func (d keyDiff) String() string {
	var parts []string
	for _, p := range []struct {
		n    int
		what string
	}{{d.added, "added"}, {d.removed, "removed"}, {d.changed, "changed state"}} {
		if p.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", p.n, p.what))
		}
	}
	if len(parts) == 0 {
		return "Keys changed: an alias, tag or other detail of a key changed"
	}
	return "Keys changed: " + strings.Join(parts, ", ")
}

func abbreviate(ids []string, n int) string {
	if len(ids) <= n {
		return strings.Join(ids, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(ids[:n], ", "), len(ids)-n)
}

// removeStrayEntries returns a JSON patch that removes the data and binaryData entries that
// someone else added to cm, or nil when there are none.
func removeStrayEntries(cm *corev1.ConfigMap, want render.Content) client.Patch {
	var ops []string
	remove := func(field, key string) {
		ops = append(ops, fmt.Sprintf(`{"op":"remove","path":"/%s/%s"}`, field, strings.NewReplacer("~", "~0", "/", "~1").Replace(key)))
	}
	for _, k := range sortedKeys(cm.Data) {
		if _, ok := want.Data[k]; !ok {
			remove("data", k)
		}
	}
	for _, k := range sortedKeys(cm.BinaryData) {
		if _, ok := want.BinaryData[k]; !ok {
			remove("binaryData", k)
		}
	}
	if len(ops) == 0 {
		return nil
	}
	return client.RawPatch(types.JSONPatchType, []byte("["+strings.Join(ops, ",")+"]"))
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
