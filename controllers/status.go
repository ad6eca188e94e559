package controllers

import (
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
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

// setSynced records a successful sync of keys, sorted by id, listed at now, and the time of the
// next refresh.
func setSynced(sel *kmsv1alpha1.KmsKeySelector, keys []kms.Key, now, next time.Time) {
	st := &sel.Status
	st.LastSyncTime = &metav1.Time{Time: now.Truncate(time.Second)}
	st.NextSyncTime = &metav1.Time{Time: next}
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
	setReady(sel, metav1.ConditionTrue, kmsv1alpha1.ReasonSynced,
		fmt.Sprintf("%d matching keys are in ConfigMap %q", len(keys), targetName(sel)))
}

func recordSynced(sel *kmsv1alpha1.KmsKeySelector) {
	metrics.Syncs.WithLabelValues(kmsv1alpha1.ReasonSynced).Inc()
	metrics.SelectorReady.WithLabelValues(sel.Namespace, sel.Name).Set(1)
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

// keyDiff compares two renderings of ConfigMap data by their "<id>: <state>" entries.
type keyDiff struct {
	added, removed, changed int
	// movedTo lists, by new state, the ids of keys whose state changed.
	movedTo map[string][]string
	// detailsChanged is set when only keys.json differs (an alias or tag changed).
	detailsChanged bool
}

func diffKeys(previousContent *render.Content, currentContent render.Content, exprs *render.Expressions) keyDiff {
	var previous map[string]string
	if previousContent != nil {
		previous = previousContent.Data
	}
	current := currentContent.Data
	isKey := func(name string) bool { return name != kmsv1alpha1.KeysJSONKey && !exprs.Defines(name) }
	d := keyDiff{movedTo: map[string][]string{}}
	for id, state := range current {
		if !isKey(id) {
			continue
		}
		old, ok := previous[id]
		switch {
		case !ok:
			d.added++
		case old != state:
			d.changed++
			d.movedTo[state] = append(d.movedTo[state], id)
		}
	}
	for id := range previous {
		if _, ok := current[id]; !ok && isKey(id) {
			d.removed++
		}
	}
	for _, ids := range d.movedTo {
		sort.Strings(ids)
	}
	d.detailsChanged = previousContent == nil || previousContent.Details() != currentContent.Details()
	for _, name := range exprs.Entries() {
		d.detailsChanged = d.detailsChanged || previous[name] != current[name]
	}
	return d
}

func (d keyDiff) empty() bool {
	return d.added == 0 && d.removed == 0 && d.changed == 0 && !d.detailsChanged
}

func (d keyDiff) String() string {
	return fmt.Sprintf("Keys changed: %d added, %d removed, %d changed state", d.added, d.removed, d.changed)
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
