package controllers

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

// The schedule is read from the selector alone, as the API server stores it, so that a restarted
// operator or a new leader keeps every selector's schedule and lists nothing early.

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

// nextListing says whether the selector must be listed now and, if not, how long until it must;
// a zero wait with due false means never, until the spec changes.
func nextListing(sel *kmsv1alpha1.KmsKeySelector, now time.Time) (due bool, wait time.Duration) {
	if requested(sel) {
		return true, 0
	}
	st := sel.Status
	ready := meta.FindStatusCondition(st.Conditions, kmsv1alpha1.ConditionReady)
	var next time.Time
	switch {
	case failedPermanently(sel):
		return false, 0
	case st.NextSyncTime != nil:
		next = st.NextSyncTime.Time
	case ready != nil && ready.Status == metav1.ConditionTrue && st.LastSyncTime != nil:
		// Written before the status had nextSyncTime.
		next = st.LastSyncTime.Add(refreshInterval(sel))
	default:
		return true, 0
	}
	if wait := next.Sub(now); wait > 0 {
		return false, wait
	}
	return true, 0
}

// listingSince returns how recent a listing must be to answer the selector now, and whether it
// must be made for this request alone. A scheduled refresh takes any listing made since its slot
// began, so that the selectors of one slot share one. A spec change or a force-sync takes one
// made since this process first saw the request: the user wants what KMS says after the change,
// and a retry after a failed write can reuse the listing. A retry after a failed listing must not
// go back to a listing older than the failure. A new selector takes any recent listing, unless
// it also asks for a force-sync, as one may whose first status is not written yet.
func (r *KmsKeySelectorReconciler) listingSince(sel *kmsv1alpha1.KmsKeySelector, now time.Time) (notBefore time.Time, fresh bool) {
	forced := sel.Annotations[kmsv1alpha1.ForceSyncAnnotation] != sel.Status.LastHandledForceSync
	switch {
	case sel.Status.ConsecutiveFailures > 0:
		return time.Time{}, true
	case forced || (requested(sel) && sel.Status.ObservedGeneration != 0):
		return r.memory.requestSeen(sel, now), true
	case sel.Status.ObservedGeneration == 0:
		return time.Time{}, false
	case sel.Status.NextSyncTime != nil:
		return sel.Status.NextSyncTime.Time, false
	}
	return time.Time{}, false
}

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

// failedPermanently tells whether the last attempt failed in a way that only a spec change, or a
// force-sync after the operator's flags changed, can mend.
func failedPermanently(sel *kmsv1alpha1.KmsKeySelector) bool {
	ready := meta.FindStatusCondition(sel.Status.Conditions, kmsv1alpha1.ConditionReady)
	return ready != nil && ready.Status == metav1.ConditionFalse && permanent(ready.Reason)
}

// failedOnProvider tells whether the last attempt failed because the provider was missing or
// did not allow the namespace: once it resolves again, the selector syncs at once rather than
// waiting out its backoff.
func failedOnProvider(sel *kmsv1alpha1.KmsKeySelector) bool {
	ready := meta.FindStatusCondition(sel.Status.Conditions, kmsv1alpha1.ConditionReady)
	return ready != nil && ready.Status == metav1.ConditionFalse &&
		(ready.Reason == kmsv1alpha1.ReasonProviderNotFound || ready.Reason == kmsv1alpha1.ReasonProviderNotAllowed)
}

// providerChanged tells whether the provider's settings, of the given digest, differ from those
// the last completed attempt used: a provider that an admin fixed or moved takes effect at once,
// not at the next refresh, nor never for a selector that failed for good on it. A failed attempt
// that found no usable provider recorded no digest, so any provider that resolves now is a change;
// a healthy selector whose status predates the digest is not listed early for it.
func providerChanged(sel *kmsv1alpha1.KmsKeySelector, digest string) bool {
	last := sel.Status.ProviderDigest
	if last == "" {
		ready := meta.FindStatusCondition(sel.Status.Conditions, kmsv1alpha1.ConditionReady)
		return ready != nil && ready.Status == metav1.ConditionFalse
	}
	return last != digest
}
