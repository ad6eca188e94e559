package controllers

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/keysource"
	"github.com/kms-key-sync/kms-key-sync/internal/render"
)

// The schedule is read from what the API server stores (the selector's status and the refresh
// checkpoint, see refreshes.go), so that a restarted operator or a new leader keeps every
// selector's schedule and lists nothing early.

// Whether a reconcile calls KMS is decided here alone, by a chain of policies read in order: the
// first that decides wins. Each decision carries its reason, which the reconciler logs at V(1).

// action is what a reconcile does for a selector.
type action string

const (
	// actionWait keeps the ConfigMap as it is until the next listing.
	actionWait action = "wait"
	// actionRepair writes what was last synced back into an edited or deleted ConfigMap, without
	// calling KMS.
	actionRepair action = "repair"
	// actionList lists the keys.
	actionList action = "list"
)

// decision is what to do for a selector now and why; for wait and repair, wait is how long until
// the next listing is due, zero when none is until something changes.
type decision struct {
	action action
	reason string
	// trigger names, for a listing, what asked for it among a few values, for the metrics.
	trigger keysource.Trigger
	wait    time.Duration
}

// situation is everything a decision is taken from: the selector as the API server stores it,
// the digest of the provider it resolved to, what its ConfigMap holds, its refreshes, and the
// time.
type situation struct {
	sel            *kmsv1alpha1.KmsKeySelector
	providerDigest string
	target         targetState
	// phase places the selector's refreshes within the interval (see nextSlot).
	phase uint64
	// due is the next refresh this process planned, zero if it planned none.
	due time.Time
	// listedThrough is the checkpoint: every refresh due before it was made.
	listedThrough time.Time
	now           time.Time
}

// targetState is what the reconciler found of the ConfigMap.
type targetState struct {
	// intact tells whether the ConfigMap holds what the selector last synced, with the labels,
	// digest and owner it asks for; true when nothing was synced yet.
	intact bool
	// repairFrom is, when it is not intact, the content to write back without listing; nil when
	// only a listing can give it.
	repairFrom *render.Content
}

// policy is one check of the chain: it decides, or passes (ok false) to the next.
type policy func(s situation) (d decision, ok bool)

// policies is the chain decide runs, in order.
var policies = []policy{
	userRequest,
	providerChanged,
	providerUsableAgain,
	failedForGood,
	listingDue,
	configMapDamaged,
}

// decide returns what to do for a selector now.
func decide(s situation) decision {
	for _, p := range policies {
		if d, ok := p(s); ok {
			return d
		}
	}
	next, _ := nextListingTime(s)
	return decision{action: actionWait, reason: "next listing at " + next.UTC().Format(time.RFC3339), wait: next.Sub(s.now)}
}

// userRequest lists for a first sync, a spec change or a force-sync that no completed attempt
// has answered.
func userRequest(s situation) (decision, bool) {
	if _, ok := pendingRequest(s.sel); !ok {
		return decision{}, false
	}
	d := decision{action: actionList, reason: "force-sync", trigger: keysource.TriggerForceSync}
	switch st := s.sel.Status; {
	case st.ObservedGeneration == 0:
		d.reason, d.trigger = "first sync", keysource.TriggerFirstSync
	case st.ObservedGeneration != s.sel.Generation:
		d.reason, d.trigger = "spec changed", keysource.TriggerSpecChange
	}
	return d, true
}

// providerChanged lists when the provider's settings differ from those the last completed
// attempt used: a provider that an admin fixed or moved takes effect at once, not at the next
// refresh, nor never for a selector that failed for good on it. A failed attempt that found no
// usable provider recorded no digest, so any provider that resolves now is a change; a healthy
// selector whose status predates the digest is not listed early for it.
func providerChanged(s situation) (decision, bool) {
	last := s.sel.Status.ProviderDigest
	changed := last != s.providerDigest
	if last == "" {
		ready := readyCondition(s.sel)
		changed = ready != nil && ready.Status == metav1.ConditionFalse
	}
	return decision{action: actionList, reason: "provider changed", trigger: keysource.TriggerProviderChange}, changed
}

// providerUsableAgain lists at once, rather than at the end of the backoff, when the last attempt
// failed because the provider was missing or did not allow the namespace: it resolves now.
func providerUsableAgain(s situation) (decision, bool) {
	ready := readyCondition(s.sel)
	usable := ready != nil && ready.Status == metav1.ConditionFalse &&
		(ready.Reason == kmsv1alpha1.ReasonProviderNotFound || ready.Reason == kmsv1alpha1.ReasonProviderNotAllowed)
	return decision{action: actionList, reason: "provider usable again", trigger: keysource.TriggerProviderChange}, usable
}

// failedForGood waits for a change after a failure that retrying cannot mend.
func failedForGood(s situation) (decision, bool) {
	if !failedPermanently(s.sel) {
		return decision{}, false
	}
	return decision{action: actionWait, reason: "failed with " + readyCondition(s.sel).Reason + ": waiting for a change"}, true
}

// listingDue lists when the next refresh, or the next retry after a failure, has come.
func listingDue(s situation) (decision, bool) {
	next, scheduled := nextListingTime(s)
	switch {
	case !scheduled:
		return decision{action: actionList, reason: "no listing scheduled", trigger: keysource.TriggerUnscheduled}, true
	case next.After(s.now):
		return decision{}, false
	case s.sel.Status.ConsecutiveFailures > 0:
		return decision{action: actionList, reason: fmt.Sprintf("retry %d due", s.sel.Status.ConsecutiveFailures+1), trigger: keysource.TriggerRetry}, true
	}
	return decision{action: actionList, reason: "refresh due", trigger: keysource.TriggerRefresh}, true
}

// configMapDamaged repairs a ConfigMap that was edited or deleted between listings, or lists
// early when only a listing can give its content.
func configMapDamaged(s situation) (decision, bool) {
	switch {
	case s.target.intact:
		return decision{}, false
	case s.target.repairFrom == nil:
		return decision{action: actionList, reason: "ConfigMap damaged, nothing to repair it from", trigger: keysource.TriggerRepair}, true
	}
	next, _ := nextListingTime(s)
	return decision{action: actionRepair, reason: "ConfigMap damaged", wait: next.Sub(s.now)}, true
}

// nextListingTime is when the next listing is due, if one is: the time the status holds (a
// retry after a failure, or a refresh a test or an earlier version set); else, for a synced
// selector, the refresh this process planned, or the one derived from its slot.
func nextListingTime(s situation) (time.Time, bool) {
	switch {
	case s.sel.Status.NextSyncTime != nil:
		return s.sel.Status.NextSyncTime.Time, true
	case !synced(s.sel):
		return time.Time{}, false
	case !s.due.IsZero():
		return s.due, true
	}
	return derivedRefresh(s), true
}

// derivedRefresh is the refresh of a synced selector that this process has not planned, as after
// a restart: the first slot the listing recorded in the status did not cover; when that slot has
// passed, the latest slot that has passed, unless the checkpoint shows it listed, and then the
// slot after it.
func derivedRefresh(s situation) time.Time {
	interval := refreshInterval(s.sel)
	first := nextSlot(s.sel.Status.LastSyncTime.Add(interval/2), interval, s.phase)
	if first.After(s.now) {
		return first
	}
	latest := nextSlot(s.now, interval, s.phase)
	if latest.After(s.now) {
		latest = latest.Add(-interval)
	}
	if latest.Before(s.listedThrough) {
		return nextSlot(latest.Add(time.Nanosecond), interval, s.phase)
	}
	return latest
}

// synced tells whether the last attempt succeeded.
func synced(sel *kmsv1alpha1.KmsKeySelector) bool {
	ready := readyCondition(sel)
	return ready != nil && ready.Status == metav1.ConditionTrue && sel.Status.LastSyncTime != nil
}

// failedPermanently tells whether the last attempt failed in a way that only a spec change, a
// provider change, or a force-sync after the operator's flags changed, can mend.
func failedPermanently(sel *kmsv1alpha1.KmsKeySelector) bool {
	ready := readyCondition(sel)
	return ready != nil && ready.Status == metav1.ConditionFalse && permanent(ready.Reason)
}

func readyCondition(sel *kmsv1alpha1.KmsKeySelector) *metav1.Condition {
	return meta.FindStatusCondition(sel.Status.Conditions, kmsv1alpha1.ConditionReady)
}

// requested tells whether the user changed the spec or asked for a sync by annotation since the
// last completed attempt.
func requested(sel *kmsv1alpha1.KmsKeySelector) bool {
	return sel.Status.ObservedGeneration != sel.Generation ||
		sel.Annotations[kmsv1alpha1.ForceSyncAnnotation] != sel.Status.LastHandledForceSync
}

// pendingRequest says what the user asked for that the last completed attempt did not answer, if
// anything: a first sync, a spec change or a force-sync.
func pendingRequest(sel *kmsv1alpha1.KmsKeySelector) (string, bool) {
	switch {
	case sel.Status.ObservedGeneration == 0:
		return "Listing the keys for the first time", true
	case sel.Status.ObservedGeneration != sel.Generation:
		return fmt.Sprintf("Listing the keys for generation %d of the spec", sel.Generation), true
	case sel.Annotations[kmsv1alpha1.ForceSyncAnnotation] != sel.Status.LastHandledForceSync:
		return "Listing the keys for a force-sync", true
	}
	return "", false
}

// listingSince returns how recent a listing must be to answer the selector now, and whether it
// must be made for this request alone. A scheduled refresh takes any listing made since its slot
// began, so that the selectors of one slot share one. A spec change or a force-sync takes one
// made since this process first saw the request: the user wants what KMS says after the change,
// and a retry after a failed write can reuse the listing. A retry after a failed listing must not
// go back to a listing older than the failure. A new selector takes a listing of its question
// made up to firstSyncReuse before it was created, so that selectors applied together share one
// listing however long the workers take to reach them, unless it also asks for a force-sync, as
// one may whose first status is not written yet.
func (r *KmsKeySelectorReconciler) listingSince(s situation) (notBefore time.Time, fresh bool) {
	sel := s.sel
	forced := sel.Annotations[kmsv1alpha1.ForceSyncAnnotation] != sel.Status.LastHandledForceSync
	switch {
	case sel.Status.ConsecutiveFailures > 0:
		return time.Time{}, true
	case forced || (requested(sel) && sel.Status.ObservedGeneration != 0):
		return r.memory.requestSeen(sel, s.now), true
	case sel.Status.ObservedGeneration == 0 && sel.CreationTimestamp.IsZero():
		return time.Time{}, false
	case sel.Status.ObservedGeneration == 0:
		return sel.CreationTimestamp.Add(-firstSyncReuse), false
	}
	next, _ := nextListingTime(s)
	return next, false
}

// firstSyncReuse bounds how old a listing may be, when a selector is created, to answer its
// first sync: long enough for a burst of selectors applied together, short enough that a key
// tagged just before a new selector is soon in its ConfigMap.
const firstSyncReuse = 30 * time.Second

// nextRefresh is the time of the refresh after a success at now. A scheduled refresh moves on to
// the very next slot, even when it was served late, so that selectors sharing a slot stay
// together; a sync the user asked for waits at least half an interval.
func nextRefresh(now time.Time, interval time.Duration, phase uint64, scheduled bool) time.Time {
	gap := interval / 2
	if scheduled {
		gap = time.Nanosecond
	}
	return nextSlot(now.Add(gap), interval, phase)
}

// nextSlot is the first time, not before earliest, whose offset within the interval is the
// phase, rounded up to a whole second as the status stores it. Selectors that ask the same
// question share a phase, so their refreshes coincide and one listing serves them all; different
// questions spread over the interval, so that a thousand selectors do not fire together.
func nextSlot(earliest time.Time, interval time.Duration, phase uint64) time.Time {
	period := int64(interval)
	offset := int64(phase % uint64(period))
	slots := (earliest.UnixNano() - offset + period - 1) / period
	return ceilSecond(time.Unix(0, slots*period+offset))
}

// retryDelay is the wait before retry number failures (1 for the first): the backoff doubles
// from base, with equal jitter, and is capped at the refresh interval, so a selector that keeps
// failing tries once an interval, like a healthy one, and never more often. KMS's Retry-After is
// honoured within the same cap.
func retryDelay(failures int, base, interval, retryAfter time.Duration, jitter func(time.Duration) time.Duration) time.Duration {
	d := base
	for i := 1; i < failures && d < 2*interval; i++ {
		d *= 2
	}
	return max(min(d/2+jitter(d/2), interval), min(retryAfter, interval))
}

// ceilSecond rounds t up to a whole second: the status stores times to the second, and a time
// rounded down would make a listing due before its time.
func ceilSecond(t time.Time) time.Time {
	if r := t.Truncate(time.Second); !r.Equal(t) {
		return r.Add(time.Second)
	}
	return t
}
