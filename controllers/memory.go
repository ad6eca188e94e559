package controllers

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/render"
)

// memory caches, per selector, what spares reads and calls: the last good content, to repair an
// edited or deleted ConfigMap without calling KMS; the resourceVersion of the ConfigMap known to
// hold it, to skip reading the ConfigMap; when a request was first seen, so that a retry can take
// the listing made for it; and the status this process last wrote, until a reconcile finds the
// cache showing it.
// Whether to call KMS is decided by decide, from the status, the ConfigMap and the refresh
// schedule (see Refreshes); memory only spares finding out what the first two hold. Losing it, as a restart does, costs one GET of each
// ConfigMap, and at most one listing for a selector whose ConfigMap was damaged meanwhile and
// holds nothing to repair it from.
type memory struct {
	mu        sync.Mutex
	selectors map[types.NamespacedName]*remembered
	requests  map[types.NamespacedName]request
	statuses  map[types.NamespacedName]writtenStatus
}

// writtenStatus is a status this process wrote, and the resourceVersions of the selector it was
// written over: a cache that still shows one of them has not seen the write yet.
type writtenStatus struct {
	uid    types.UID
	over   []string
	status *kmsv1alpha1.KmsKeySelectorStatus
}

// request is a spec change or force-sync, and when this process first saw it.
type request struct {
	uid        types.UID
	generation int64
	forceSync  string
	seen       time.Time
}

type remembered struct {
	uid types.UID
	// packed is the content gzip-compressed: a tenth of the memory, for a repair that is rare.
	packed          []byte
	digest          string
	resourceVersion string
}

func (m *memory) entry(sel *kmsv1alpha1.KmsKeySelector) *remembered {
	e, ok := m.selectors[types.NamespacedName{Namespace: sel.Namespace, Name: sel.Name}]
	if !ok || e.uid != sel.UID {
		return nil
	}
	return e
}

// remember records that the selector's ConfigMap at resourceVersion holds c.
func (m *memory) remember(sel *kmsv1alpha1.KmsKeySelector, resourceVersion string, c render.Content) {
	packed := pack(c)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.selectors == nil {
		m.selectors = map[types.NamespacedName]*remembered{}
	}
	m.selectors[types.NamespacedName{Namespace: sel.Namespace, Name: sel.Name}] = &remembered{
		uid: sel.UID, packed: packed, digest: c.Digest(), resourceVersion: resourceVersion,
	}
}

// holds tells whether the ConfigMap at resourceVersion is known to hold the content of digest.
func (m *memory) holds(sel *kmsv1alpha1.KmsKeySelector, resourceVersion, digest string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entry(sel)
	return e != nil && resourceVersion != "" && e.resourceVersion == resourceVersion && e.digest == digest
}

// lastGood returns the content of the selector's last successful sync.
func (m *memory) lastGood(sel *kmsv1alpha1.KmsKeySelector) (render.Content, bool) {
	m.mu.Lock()
	e := m.entry(sel)
	m.mu.Unlock()
	if e == nil || e.packed == nil {
		return render.Content{}, false
	}
	c, err := unpack(e.packed)
	return c, err == nil
}

// requestSeen returns when this process first saw the selector's current generation and
// force-sync value: any listing made since answers the request, so a retry after a failed write
// need not list again.
func (m *memory) requestSeen(sel *kmsv1alpha1.KmsKeySelector, now time.Time) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := types.NamespacedName{Namespace: sel.Namespace, Name: sel.Name}
	cur := request{uid: sel.UID, generation: sel.Generation, forceSync: sel.Annotations[kmsv1alpha1.ForceSyncAnnotation], seen: now}
	if prev, ok := m.requests[key]; ok && prev.uid == cur.uid && prev.generation == cur.generation && prev.forceSync == cur.forceSync {
		return prev.seen
	}
	if m.requests == nil {
		m.requests = map[types.NamespacedName]request{}
	}
	m.requests[key] = cur
	return now
}

// statusWritten records that the status of sel, now as the API server stores it, was written
// over the selector's resourceVersions over.
func (m *memory) statusWritten(sel *kmsv1alpha1.KmsKeySelector, over []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.statuses == nil {
		m.statuses = map[types.NamespacedName]writtenStatus{}
	}
	m.statuses[types.NamespacedName{Namespace: sel.Namespace, Name: sel.Name}] = writtenStatus{
		uid: sel.UID, over: slices.Clone(over), status: sel.Status.DeepCopy(),
	}
}

// catchUp gives sel, read from the cache, the status this process last wrote when the cache
// has not seen that write yet: the next reconcile often starts before the watch delivers it,
// and would otherwise answer a request that was already answered. Once the cache has seen it,
// the written status is forgotten.
func (m *memory) catchUp(sel *kmsv1alpha1.KmsKeySelector) {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := types.NamespacedName{Namespace: sel.Namespace, Name: sel.Name}
	w, ok := m.statuses[key]
	switch {
	case !ok:
	case w.uid == sel.UID && slices.Contains(w.over, sel.ResourceVersion):
		sel.Status = *w.status.DeepCopy()
	default:
		delete(m.statuses, key)
	}
}

func (m *memory) forget(key types.NamespacedName) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.selectors, key)
	delete(m.requests, key)
	delete(m.statuses, key)
}

// pack compresses content for keeping; nil if that fails, which only costs a KMS call on repair.
func pack(c render.Content) []byte {
	raw, err := json.Marshal(c)
	if err != nil {
		return nil
	}
	packed, err := render.Gzip(raw, gzip.BestSpeed)
	if err != nil {
		return nil
	}
	return packed
}

func unpack(packed []byte) (render.Content, error) {
	zr, err := gzip.NewReader(bytes.NewReader(packed))
	if err != nil {
		return render.Content{}, err
	}
	var c render.Content
	err = json.NewDecoder(zr).Decode(&c)
	return c, err
}
