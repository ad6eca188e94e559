package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

// A selector's status is written only when something a user acts on changed, so an unchanged
// refresh leaves no trace in the API server. Refreshes are scheduled instead from each question's
// slot (see nextSlot), from the last listing the status records, and from one checkpoint: the
// time through which every synced selector's scheduled refreshes were made, which the leader
// writes into one ConfigMap every few seconds. A restarted operator or a new leader derives each
// selector's next refresh from those: a slot the checkpoint covers is not listed again, and one
// after it is listed at once. docs/scaling.md explains the trade-off.

const (
	// CheckpointName is the ConfigMap, in the operator's namespace, that holds the checkpoint.
	CheckpointName = "kms-key-sync-schedule"
	// checkpointKey is its entry: an RFC 3339 time.
	checkpointKey = "listedThrough"
	// DefaultCheckpointInterval is how often the leader writes the checkpoint when it moved.
	DefaultCheckpointInterval = 5 * time.Second
)

// Refreshes keeps, in memory, when each synced selector was last listed and when its next
// refresh is due, and the checkpoint. The selector reconciler schedules with it, the provider
// reconciler reads from it which selectors listed recently, and, added to the manager, it
// writes the checkpoint while this process leads.
type Refreshes struct {
	// Client writes the checkpoint; Reader reads it once, uncached. Cache lists the selectors.
	Client client.Client
	Reader client.Reader
	Cache  client.Reader
	// Namespace holds the checkpoint; empty means no checkpoint: a restart then lists again each
	// selector whose latest slot passed since its status last changed.
	Namespace string
	// Interval is how often the checkpoint is written when it moved; zero means
	// DefaultCheckpointInterval.
	Interval time.Duration
	// Now stands in for the clock in tests; nil means time.Now.
	Now func() time.Time

	mu        sync.Mutex
	selectors map[types.NamespacedName]refresh
	// checkpoint is the time through which every scheduled refresh was made, as last read or
	// written; loaded tells whether it was read.
	checkpoint time.Time
	loaded     bool
}

// refresh is what this process knows of a selector's refreshes.
type refresh struct {
	uid    types.UID
	listed time.Time // the last successful listing, zero if none by this process
	due    time.Time // the next refresh, zero if the status schedules it (a retry) or none is
}

// ListedThrough returns the checkpoint, reading it on first use.
func (r *Refreshes) ListedThrough(ctx context.Context) (time.Time, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.loaded || r.Namespace == "" {
		return r.checkpoint, nil
	}
	stored, err := readCheckpoint(ctx, r.Reader, r.Namespace)
	if err != nil {
		return time.Time{}, err
	}
	r.checkpoint, r.loaded = stored, true
	return stored, nil
}

// Listed records a successful listing of sel at listed, and its next refresh.
func (r *Refreshes) Listed(sel *kmsv1alpha1.KmsKeySelector, listed, due time.Time) {
	r.update(sel, func(e *refresh) { e.listed, e.due = listed, due })
}

// Planned records the next refresh of sel; zero when its status schedules it, or none is.
func (r *Refreshes) Planned(sel *kmsv1alpha1.KmsKeySelector, due time.Time) {
	r.update(sel, func(e *refresh) { e.due = due })
}

// Due returns the next refresh of sel that this process planned, zero if none.
func (r *Refreshes) Due(sel *kmsv1alpha1.KmsKeySelector) time.Time {
	e, _ := r.get(sel)
	return e.due
}

// LastListed returns when this process last listed the keys of sel successfully, zero if never.
func (r *Refreshes) LastListed(sel *kmsv1alpha1.KmsKeySelector) time.Time {
	e, _ := r.get(sel)
	return e.listed
}

// Forget drops a deleted selector.
func (r *Refreshes) Forget(key types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.selectors, key)
}

func (r *Refreshes) get(sel *kmsv1alpha1.KmsKeySelector) (refresh, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.selectors[types.NamespacedName{Namespace: sel.Namespace, Name: sel.Name}]
	if !ok || e.uid != sel.UID {
		return refresh{}, false
	}
	return e, true
}

func (r *Refreshes) update(sel *kmsv1alpha1.KmsKeySelector, change func(*refresh)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := types.NamespacedName{Namespace: sel.Namespace, Name: sel.Name}
	e := r.selectors[key]
	if e.uid != sel.UID {
		e = refresh{uid: sel.UID}
	}
	change(&e)
	if r.selectors == nil {
		r.selectors = map[types.NamespacedName]refresh{}
	}
	r.selectors[key] = e
}

// NeedLeaderElection makes only the leader write the checkpoint.
func (r *Refreshes) NeedLeaderElection() bool { return true }

// Start writes the checkpoint every Interval while it moves, and once more when ctx ends, so
// that a graceful stop leaves nothing to list again.
func (r *Refreshes) Start(ctx context.Context) error {
	if r.Namespace == "" {
		log.FromContext(ctx).Info("No namespace for the refresh checkpoint: a restart lists again the selectors whose refresh passed since their status changed")
		return nil
	}
	interval := r.Interval
	if interval <= 0 {
		interval = DefaultCheckpointInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			final, cancel := context.WithTimeout(context.WithoutCancel(ctx), interval)
			defer cancel()
			if err := r.write(final); err != nil {
				log.FromContext(ctx).Error(err, "Cannot write the refresh checkpoint on stopping")
			}
			return nil
		case <-tick.C:
			if err := r.write(ctx); err != nil && ctx.Err() == nil {
				log.FromContext(ctx).Error(err, "Cannot write the refresh checkpoint")
			}
		}
	}
}

// write computes the checkpoint and writes it when it moved.
func (r *Refreshes) write(ctx context.Context) error {
	stored, err := r.ListedThrough(ctx)
	if err != nil {
		return err
	}
	through, err := r.listedThrough(ctx, stored)
	if err != nil {
		return err
	}
	if through.IsZero() || through.Equal(stored) {
		return nil
	}
	cm := corev1ac.ConfigMap(CheckpointName, r.Namespace).
		WithData(map[string]string{checkpointKey: through.UTC().Format(time.RFC3339Nano)})
	if err := r.Client.Apply(ctx, cm, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying ConfigMap %s/%s: %w", r.Namespace, CheckpointName, err)
	}
	r.mu.Lock()
	r.checkpoint = through
	r.mu.Unlock()
	return nil
}

// listedThrough is the time before which every synced selector's scheduled refreshes were made:
// the earliest refresh still due, or just after now. A synced selector this process has not
// planned yet holds it at stored, which covers the refreshes an earlier leader made.
func (r *Refreshes) listedThrough(ctx context.Context, stored time.Time) (time.Time, error) {
	var sels kmsv1alpha1.KmsKeySelectorList
	// Read only: the cache's own objects, not a copy of every selector every few seconds.
	if err := r.Cache.List(ctx, &sels, client.UnsafeDisableDeepCopy); err != nil {
		return time.Time{}, fmt.Errorf("listing selectors: %w", err)
	}
	now := time.Now()
	if r.Now != nil {
		now = r.Now()
	}
	// With no refresh due, every slot up to now, now included, was listed.
	through := now.Add(time.Nanosecond)
	for i := range sels.Items {
		sel := &sels.Items[i]
		if !slotScheduled(sel) {
			continue
		}
		due := r.Due(sel)
		if due.IsZero() {
			due = stored
		}
		through = minTime(through, due)
	}
	return through, nil
}

// slotScheduled tells whether the selector's next refresh follows its slot, rather than a time
// its status holds or a request that lists at once.
func slotScheduled(sel *kmsv1alpha1.KmsKeySelector) bool {
	_, pending := pendingRequest(sel)
	return !sel.Spec.Suspend && !pending && synced(sel) && sel.Status.NextSyncTime == nil
}

func readCheckpoint(ctx context.Context, reader client.Reader, namespace string) (time.Time, error) {
	stored := &corev1.ConfigMap{}
	if err := reader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: CheckpointName}, stored); err != nil {
		if apierrors.IsNotFound(err) {
			return time.Time{}, nil
		}
		return time.Time{}, fmt.Errorf("reading the refresh checkpoint %s/%s: %w", namespace, CheckpointName, err)
	}
	t, err := time.Parse(time.RFC3339Nano, stored.Data[checkpointKey])
	if err != nil {
		// Unreadable: as if there were none, which lists again rather than skipping a refresh.
		return time.Time{}, nil
	}
	return t, nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
