package controllers

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"math/rand/v2"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

// schedule remembers, per selector, the last good ConfigMap content (to repair the ConfigMap
// without calling KMS), when the next listing is due, and the failures since the last success.
// It is lost on restart; the status then tells whether a listing is due.
type schedule struct {
	mu        sync.Mutex
	selectors map[types.NamespacedName]*selectorState
}

type selectorState struct {
	uid types.UID
	// packed is the last good content, gzip-compressed: a tenth of the memory, for a repair
	// that is rare. Nil until a sync succeeded since start.
	packed   []byte
	nextSync time.Time
	failures int
	// handledGeneration and handledForceSync record what the last sync attempt answered, since
	// the cache may not show that attempt's status yet when the next event arrives.
	handledGeneration int64
	handledForceSync  *string
	// writtenVersion and writtenDigest say which resourceVersion of the ConfigMap holds which
	// content, as this operator last wrote or read it.
	writtenVersion, writtenDigest string
}

func (st *selectorState) written(resourceVersion, digest string) {
	st.writtenVersion, st.writtenDigest = resourceVersion, digest
}

// wrote tells whether the ConfigMap at resourceVersion is known to hold the content of digest.
func (st *selectorState) wrote(resourceVersion, digest string) bool {
	return resourceVersion != "" && resourceVersion == st.writtenVersion && digest == st.writtenDigest
}

func (s *schedule) get(sel *kmsv1alpha1.KmsKeySelector) *selectorState {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := types.NamespacedName{Namespace: sel.Namespace, Name: sel.Name}
	if st, ok := s.selectors[key]; ok && st.uid == sel.UID {
		return st
	}
	if s.selectors == nil {
		s.selectors = map[types.NamespacedName]*selectorState{}
	}
	st := &selectorState{uid: sel.UID}
	// After a restart, a selector that synced recently is not listed again before its time.
	if meta.IsStatusConditionTrue(sel.Status.Conditions, kmsv1alpha1.ConditionReady) && sel.Status.LastSyncTime != nil {
		st.nextSync = sel.Status.LastSyncTime.Add(refreshInterval(sel))
	}
	s.selectors[key] = st
	return st
}

func (s *schedule) forget(key types.NamespacedName) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.selectors, key)
}

// due tells whether the selector must be listed now: the user asked for it, or its next sync
// time has come.
func (st *selectorState) due(sel *kmsv1alpha1.KmsKeySelector, now time.Time) bool {
	return st.requested(sel) || !now.Before(st.nextSync)
}

// requested tells whether the user changed the spec or asked for a sync by annotation.
func (st *selectorState) requested(sel *kmsv1alpha1.KmsKeySelector) bool {
	return st.specChanged(sel) || st.forced(sel)
}

func (st *selectorState) specChanged(sel *kmsv1alpha1.KmsKeySelector) bool {
	return sel.Status.ObservedGeneration != sel.Generation && st.handledGeneration != sel.Generation
}

func (st *selectorState) forced(sel *kmsv1alpha1.KmsKeySelector) bool {
	want := sel.Annotations[kmsv1alpha1.ForceSyncAnnotation]
	return want != sel.Status.LastHandledForceSync && (st.handledForceSync == nil || *st.handledForceSync != want)
}

// handled records that a sync attempt answers the selector's generation and force-sync request.
func (st *selectorState) handled(sel *kmsv1alpha1.KmsKeySelector) {
	want := sel.Annotations[kmsv1alpha1.ForceSyncAnnotation]
	st.handledGeneration = sel.Generation
	st.handledForceSync = &want
}

// wantsFresh tells whether the listing must be made now rather than reused from an identical
// question a moment ago: a user who changed the spec or asked for a sync wants what KMS says
// now, and a retry must not go back to a listing older than the attempt that failed. A new
// selector can share its first listing.
func (st *selectorState) wantsFresh(sel *kmsv1alpha1.KmsKeySelector) bool {
	created := sel.Status.ObservedGeneration == 0
	return (st.specChanged(sel) && !created) || st.forced(sel) || st.failures > 0
}

// succeeded schedules the next refresh. A scheduled refresh moves on to the very next slot, even
// when it was served late, so that selectors sharing a slot stay together; a sync the user asked
// for waits at least half an interval.
func (st *selectorState) succeeded(c content, now time.Time, interval time.Duration, phase uint64, scheduled bool) {
	st.packed = pack(c)
	st.failures = 0
	gap := interval / 2
	if scheduled {
		gap = time.Nanosecond
	}
	st.nextSync = nextSlot(now.Add(gap), interval, phase)
}

// lastGood returns the content of the last successful sync, or nil.
func (st *selectorState) lastGood() *content {
	if st.packed == nil {
		return nil
	}
	c, err := unpack(st.packed)
	if err != nil {
		return nil
	}
	return &c
}

// nextSlot is the first time, not before earliest, whose offset within the interval is the
// phase. Selectors that ask the same question share a phase, so their refreshes coincide and
// one listing serves them all; different questions spread over the interval, so that a thousand
// selectors do not fire together.
func nextSlot(earliest time.Time, interval time.Duration, phase uint64) time.Time {
	period := int64(interval)
	offset := int64(phase % uint64(period))
	slots := (earliest.UnixNano() - offset + period - 1) / period
	return time.Unix(0, slots*period+offset)
}

// pack compresses content for keeping; nil if that fails, which only costs a KMS call on repair.
func pack(c content) []byte {
	raw, err := json.Marshal(c)
	if err != nil {
		return nil
	}
	packed, err := gzipBytes(raw, gzip.BestSpeed)
	if err != nil {
		return nil
	}
	return packed
}

func unpack(packed []byte) (content, error) {
	zr, err := gzip.NewReader(bytes.NewReader(packed))
	if err != nil {
		return content{}, err
	}
	var c content
	err = json.NewDecoder(zr).Decode(&c)
	return c, err
}

// failed schedules the next attempt: the backoff doubles from base, with equal jitter, and is
// capped at the refresh interval (as is KMS's Retry-After), so a selector that keeps failing tries once an interval, like
// a healthy one, and never more often.
func (st *selectorState) failed(now time.Time, base, interval, retryAfter time.Duration) time.Duration {
	st.failures++
	// KMS's own Retry-After is honoured between syncs too, within the cap.
	delay := max(backoff(st.failures, base, interval), min(retryAfter, interval))
	st.nextSync = now.Add(delay)
	return delay
}

// failedPermanently waits for a spec change, which marks the selector due by its generation.
func (st *selectorState) failedPermanently() {
	st.nextSync = time.Time{}.Add(1<<63 - 1)
}

func backoff(failures int, base, ceiling time.Duration) time.Duration {
	d := base
	for i := 1; i < failures && d < 2*ceiling; i++ {
		d *= 2
	}
	return min(d/2+time.Duration(rand.Int64N(int64(d/2)+1)), ceiling)
}
