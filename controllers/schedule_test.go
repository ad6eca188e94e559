package controllers

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/keysource"
	"github.com/kms-key-sync/kms-key-sync/internal/render"
)

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

func TestMemoryCatchesUpOnlyACacheThatHasNotSeenTheWriteThenForgetsIt(t *testing.T) {
	var m memory
	sel := &kmsv1alpha1.KmsKeySelector{}
	sel.Namespace, sel.Name, sel.UID, sel.ResourceVersion = "ns", "sel", "uid-1", "11"
	sel.Status.ObservedGeneration = 2
	// One reconcile wrote over 9 (Reconciling), then over 10 (the outcome).
	m.statusWritten(sel, []string{"9", "10"})

	for _, version := range []string{"9", "10"} {
		stale := sel.DeepCopy()
		stale.ResourceVersion, stale.Status = version, kmsv1alpha1.KmsKeySelectorStatus{ObservedGeneration: 1}
		m.catchUp(stale)
		if stale.Status.ObservedGeneration != 2 {
			t.Errorf("a cache still at version %s, written over, kept its old status", version)
		}
	}
	for name, other := range map[string]func(*kmsv1alpha1.KmsKeySelector){
		"a later version":      func(s *kmsv1alpha1.KmsKeySelector) { s.ResourceVersion = "12" },
		"a recreated selector": func(s *kmsv1alpha1.KmsKeySelector) { s.ResourceVersion, s.UID = "10", "uid-2" },
		"the version it wrote": func(s *kmsv1alpha1.KmsKeySelector) { s.ResourceVersion = "11" },
	} {
		m.statusWritten(sel, []string{"9", "10"})
		cur := sel.DeepCopy()
		cur.Status = kmsv1alpha1.KmsKeySelectorStatus{ObservedGeneration: 7}
		other(cur)
		m.catchUp(cur)
		if cur.Status.ObservedGeneration != 7 {
			t.Errorf("%s: the cached status was replaced", name)
		}
		if len(m.statuses) != 0 {
			t.Errorf("%s: the written status is still kept once the cache has moved past it", name)
		}
	}
}

func TestDecideTakesEachSituationToItsActionAndReason(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(d)} }
	ready := func(status metav1.ConditionStatus, reason string) []metav1.Condition {
		return []metav1.Condition{{Type: kmsv1alpha1.ConditionReady, Status: status, Reason: reason}}
	}
	failedWith := func(reason string) func(*kmsv1alpha1.KmsKeySelector) {
		return func(s *kmsv1alpha1.KmsKeySelector) {
			s.Status.Conditions = ready(metav1.ConditionFalse, reason)
			s.Status.NextSyncTime, s.Status.ConsecutiveFailures = at(5*time.Second), 2
		}
	}
	edited := targetState{repairFrom: &render.Content{Data: map[string]string{"k": "Enabled"}}}
	const provider = "digest-1"
	// now is 800 s into a 30-minute interval: with phase 0, the latest slot was at 22:00:00 and
	// the next is at 22:30:00.
	restarted := func(lastChange time.Duration, listedThrough time.Duration) func(*situation) {
		return func(s *situation) {
			s.due = time.Time{}
			s.sel.Status.LastSyncTime = at(lastChange)
			if listedThrough != 0 {
				s.listedThrough = now.Add(listedThrough)
			}
		}
	}
	cases := []struct {
		name   string
		mutate func(*situation)
		target targetState
		want   decision
	}{
		{"synced, refresh planned ahead", nil, targetState{intact: true},
			decision{actionWait, "next listing at 2023-11-14T22:53:20Z", "", 40 * time.Minute}},
		{"planned refresh come", func(s *situation) { s.due = now.Add(-time.Second) }, edited,
			decision{actionList, "refresh due", keysource.TriggerRefresh, 0}},
		{"restarted, the slot after the last change ahead", restarted(-time.Minute, 0), targetState{intact: true},
			decision{actionWait, "next listing at 2023-11-14T22:30:00Z", "", 1000 * time.Second}},
		{"restarted, a slot passed and no checkpoint covers it", restarted(-50*time.Minute, 0), targetState{intact: true},
			decision{actionList, "refresh due", keysource.TriggerRefresh, 0}},
		{"restarted, a slot passed before the checkpoint", restarted(-50*time.Minute, -5*time.Second), targetState{intact: true},
			decision{actionWait, "next listing at 2023-11-14T22:30:00Z", "", 1000 * time.Second}},
		{"restarted, a slot passed after the checkpoint", restarted(-50*time.Minute, -900*time.Second), targetState{intact: true},
			decision{actionList, "refresh due", keysource.TriggerRefresh, 0}},
		// The checkpoint is the instant before which every refresh was made: one a nanosecond
		// after the slot covers it, one at the slot does not.
		{"restarted, the checkpoint just after the latest slot", restarted(-50*time.Minute, -800*time.Second+time.Nanosecond), targetState{intact: true},
			decision{actionWait, "next listing at 2023-11-14T22:30:00Z", "", 1000 * time.Second}},
		{"restarted, the checkpoint at the latest slot", restarted(-50*time.Minute, -800*time.Second), targetState{intact: true},
			decision{actionList, "refresh due", keysource.TriggerRefresh, 0}},
		{"never synced", func(s *situation) { s.sel.Status = kmsv1alpha1.KmsKeySelectorStatus{} }, targetState{intact: true},
			decision{actionList, "first sync", keysource.TriggerFirstSync, 0}},
		{"spec changed", func(s *situation) { s.sel.Generation = 3 }, targetState{intact: true},
			decision{actionList, "spec changed", keysource.TriggerSpecChange, 0}},
		{"force-sync asked", func(s *situation) {
			s.sel.Annotations = map[string]string{kmsv1alpha1.ForceSyncAnnotation: "now"}
		}, targetState{intact: true}, decision{actionList, "force-sync", keysource.TriggerForceSync, 0}},
		{"provider changed", func(s *situation) { s.sel.Status.ProviderDigest = "digest-0" }, targetState{intact: true},
			decision{actionList, "provider changed", keysource.TriggerProviderChange, 0}},
		{"failed before any provider resolved, which does now", func(s *situation) {
			failedWith(kmsv1alpha1.ReasonInvalidSpec)(s.sel)
			s.sel.Status.ProviderDigest = ""
		}, targetState{intact: true}, decision{actionList, "provider changed", keysource.TriggerProviderChange, 0}},
		{"healthy, synced before the provider digest existed", func(s *situation) { s.sel.Status.ProviderDigest = "" },
			targetState{intact: true}, decision{actionWait, "next listing at 2023-11-14T22:53:20Z", "", 40 * time.Minute}},
		{"provider found again", func(s *situation) { failedWith(kmsv1alpha1.ReasonProviderNotFound)(s.sel) }, targetState{intact: true},
			decision{actionList, "provider usable again", keysource.TriggerProviderChange, 0}},
		{"namespace allowed again", func(s *situation) { failedWith(kmsv1alpha1.ReasonProviderNotAllowed)(s.sel) }, targetState{intact: true},
			decision{actionList, "provider usable again", keysource.TriggerProviderChange, 0}},
		{"failed for good", func(s *situation) {
			failedWith(kmsv1alpha1.ReasonInvalidSpec)(s.sel)
			s.sel.Status.NextSyncTime = nil
		}, edited, decision{actionWait, "failed with InvalidSpec: waiting for a change", "", 0}},
		{"retry ahead", func(s *situation) { failedWith(kmsv1alpha1.ReasonKMSRequestFailed)(s.sel) }, targetState{intact: true},
			decision{actionWait, "next listing at 2023-11-14T22:13:25Z", "", 5 * time.Second}},
		{"retry come", func(s *situation) {
			failedWith(kmsv1alpha1.ReasonKMSRequestFailed)(s.sel)
			s.sel.Status.NextSyncTime = at(-time.Second)
		}, targetState{intact: true}, decision{actionList, "retry 3 due", keysource.TriggerRetry, 0}},
		{"the status holds a refresh time that has come", func(s *situation) { s.sel.Status.NextSyncTime = at(-time.Second) }, edited,
			decision{actionList, "refresh due", keysource.TriggerRefresh, 0}},
		{"no schedule at all", func(s *situation) {
			s.sel.Status.Conditions = ready(metav1.ConditionFalse, kmsv1alpha1.ReasonKMSRequestFailed)
			s.sel.Status.NextSyncTime = nil
		}, targetState{intact: true}, decision{actionList, "no listing scheduled", keysource.TriggerUnscheduled, 0}},
		{"ConfigMap edited, content at hand", nil, edited, decision{actionRepair, "ConfigMap damaged", "", 40 * time.Minute}},
		{"ConfigMap deleted, nothing to repair from", nil, targetState{},
			decision{actionList, "ConfigMap damaged, nothing to repair it from", keysource.TriggerRepair, 0}},
	}
	for _, tc := range cases {
		sel := &kmsv1alpha1.KmsKeySelector{}
		sel.Generation = 2
		sel.Spec.RefreshInterval = &metav1.Duration{Duration: 30 * time.Minute}
		sel.Status = kmsv1alpha1.KmsKeySelectorStatus{
			ObservedGeneration: 2, Conditions: ready(metav1.ConditionTrue, kmsv1alpha1.ReasonSynced),
			LastSyncTime: at(-time.Minute), ProviderDigest: provider,
		}
		s := situation{sel: sel, providerDigest: provider, target: tc.target, due: now.Add(40 * time.Minute), now: now}
		if tc.mutate != nil {
			tc.mutate(&s)
		}
		if got := decide(s); got != tc.want {
			t.Errorf("%s: decide = %+v; want %+v", tc.name, got, tc.want)
		}
	}
}

func TestListingSinceTakesOnlyNewListingsForAForceSync(t *testing.T) {
	r := &KmsKeySelectorReconciler{}
	now := time.Unix(1_700_000_000, 0)
	sel := &kmsv1alpha1.KmsKeySelector{}
	sel.Generation = 1
	s := situation{sel: sel, now: now}
	if notBefore, fresh := r.listingSince(s); fresh || !notBefore.IsZero() {
		t.Errorf("a new selector with no creation time: listingSince = %v, %v; want any recent listing", notBefore, fresh)
	}
	sel.CreationTimestamp = metav1.NewTime(now.Add(-time.Minute))
	if notBefore, fresh := r.listingSince(s); fresh || !notBefore.Equal(now.Add(-90*time.Second)) {
		t.Errorf("a new selector: listingSince = %v, %v; want listings since 30s before its creation", notBefore, fresh)
	}
	// Asked for a force-sync before its first status was written: a listing from before the
	// request must not answer it.
	sel.Annotations = map[string]string{kmsv1alpha1.ForceSyncAnnotation: "1"}
	if notBefore, fresh := r.listingSince(s); !fresh || !notBefore.Equal(now) {
		t.Errorf("a new selector asking for a force-sync: listingSince = %v, %v; want only listings since %v", notBefore, fresh, now)
	}
	sel.Status.ObservedGeneration, sel.Status.LastHandledForceSync = 1, "1"
	sel.Status.NextSyncTime = &metav1.Time{Time: now.Add(-time.Second)}
	if notBefore, fresh := r.listingSince(s); fresh || !notBefore.Equal(now.Add(-time.Second)) {
		t.Errorf("a scheduled refresh: listingSince = %v, %v; want listings since its slot", notBefore, fresh)
	}
	sel.Status.ConsecutiveFailures = 1
	if notBefore, fresh := r.listingSince(s); !fresh || !notBefore.IsZero() {
		t.Errorf("a retry: listingSince = %v, %v; want a new listing", notBefore, fresh)
	}
}
