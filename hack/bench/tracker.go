package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/operator"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

const pollInterval = 100 * time.Millisecond

// lastSyncMetric is the operator's gauge of when each selector last listed its keys. The status
// is not written when a refresh changed nothing, so this is where a refresh shows.
const lastSyncMetric = "kms_key_sync_selector_last_sync_timestamp_seconds"

// tracker notes when each selector first became Ready, from a watch (watching costs the API
// server far less than listing thousands of selectors over and over), and when it refreshed,
// from samples of the operator's lastSyncMetric: every change of a selector's value after its
// first (the first sync) is one refresh, dated when the sample that showed it was taken.
type tracker struct {
	cancel context.CancelFunc
	runCtx context.Context
	done   chan error
	polls  sync.WaitGroup

	mu        sync.Mutex
	selectors map[types.NamespacedName]*selectorState
	want      int
}

type selectorState struct {
	filter     string
	firstReady time.Time
	// lastSync is the last value of lastSyncMetric sampled, zero before the first sync.
	lastSync float64
	// synced says whether the Ready condition's reason was Synced in the last update seen.
	synced bool
	// refreshes are the times lastSync was seen to move after the first sync.
	refreshes []time.Time
}

// nthRefresh returns when the selector's n-th refresh was seen, zero if not yet.
func nthRefresh(n int) func(*selectorState) time.Time {
	return func(s *selectorState) time.Time {
		if len(s.refreshes) < n {
			return time.Time{}
		}
		return s.refreshes[n-1]
	}
}

func firstReady(s *selectorState) time.Time { return s.firstReady }

func startTracker(ctx context.Context, cfg *rest.Config, sc scenario) (*tracker, error) {
	c, err := cache.New(cfg, cache.Options{Scheme: operator.Scheme, DefaultTransform: slim})
	if err != nil {
		return nil, fmt.Errorf("creating the selector watch: %w", err)
	}
	informer, err := c.GetInformer(ctx, &kmsv1alpha1.KmsKeySelector{})
	if err != nil {
		return nil, fmt.Errorf("creating the selector watch: %w", err)
	}
	t := &tracker{done: make(chan error, 1), selectors: map[types.NamespacedName]*selectorState{}, want: sc.selectors}
	if _, err := informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    t.observe,
		UpdateFunc: func(_, obj any) { t.observe(obj) },
	}); err != nil {
		return nil, err
	}
	t.runCtx, t.cancel = context.WithCancel(context.Background())
	go func() { t.done <- c.Start(t.runCtx) }()
	if !c.WaitForCacheSync(ctx) {
		return nil, errors.Join(errors.New("the selector watch did not sync"), t.stop())
	}
	return t, nil
}

// followRefreshes samples the operator's lastSyncMetric every interval until the tracker stops.
// A failed sample (the operator busy or stopped) is skipped; a refresh it hid shows in the next.
func (t *tracker) followRefreshes(op *operatorProc, every time.Duration) {
	t.polls.Add(1)
	go func() {
		defer t.polls.Done()
		ticker := time.NewTicker(every)
		defer ticker.Stop()
		for {
			if m, err := op.metrics(t.runCtx, lastSyncMetric); err == nil {
				t.sampled(m.Series(lastSyncMetric, nil), time.Now())
			}
			select {
			case <-t.runCtx.Done():
				return
			case <-ticker.C:
			}
		}
	}()
}

func (t *tracker) sampled(series []testkit.Series, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range series {
		st := t.state(types.NamespacedName{Namespace: s.Labels["namespace"], Name: s.Labels["selector"]})
		if s.Value != st.lastSync && st.lastSync != 0 {
			st.refreshes = append(st.refreshes, at)
		}
		st.lastSync = s.Value
	}
}

func (t *tracker) stop() error {
	t.cancel()
	t.polls.Wait()
	return <-t.done
}

// slim keeps of a selector only what the tracker reads.
func slim(obj any) (any, error) {
	if sel, ok := obj.(*kmsv1alpha1.KmsKeySelector); ok {
		sel.ManagedFields = nil
		sel.Status.Keys = nil
	}
	return obj, nil
}

// state returns the state of the selector key, new if need be; t.mu is held.
func (t *tracker) state(key types.NamespacedName) *selectorState {
	s := t.selectors[key]
	if s == nil {
		s = &selectorState{}
		t.selectors[key] = s
	}
	return s
}

func (t *tracker) observe(obj any) {
	sel, ok := obj.(*kmsv1alpha1.KmsKeySelector)
	if !ok {
		return
	}
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.state(client.ObjectKeyFromObject(sel))
	s.filter = filterKey(tagsOf(sel))
	ready := meta.FindStatusCondition(sel.Status.Conditions, kmsv1alpha1.ConditionReady)
	s.synced = ready != nil && ready.Reason == kmsv1alpha1.ReasonSynced
	if s.firstReady.IsZero() && sel.Status.ObservedGeneration == sel.Generation &&
		meta.IsStatusConditionTrue(sel.Status.Conditions, kmsv1alpha1.ConditionReady) {
		s.firstReady = now
	}
}

func tagsOf(sel *kmsv1alpha1.KmsKeySelector) []kms.TagFilter {
	out := make([]kms.TagFilter, 0, len(sel.Spec.Tags))
	for _, t := range sel.Spec.Tags {
		out = append(out, kms.TagFilter{Key: t.Key, Values: t.Values})
	}
	return out
}

// count returns how many selectors have a time by of, and the latest such time.
func (t *tracker) count(of func(*selectorState) time.Time) (int, time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, last := 0, time.Time{}
	for _, s := range t.selectors {
		if at := of(s); !at.IsZero() {
			n++
			if at.After(last) {
				last = at
			}
		}
	}
	return n, last
}

// cutoffs returns, per filter, the latest time by of among its selectors; a filter with a
// selector that has no such time yet is left out.
func (t *tracker) cutoffs(of func(*selectorState) time.Time) map[string]time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]time.Time{}
	missing := map[string]bool{}
	for _, s := range t.selectors {
		at := of(s)
		if at.IsZero() {
			missing[s.filter] = true
		}
		if at.After(out[s.filter]) {
			out[s.filter] = at
		}
	}
	for f := range missing {
		delete(out, f)
	}
	return out
}

// longestGap returns the longest time between the n-th and the n+1-th refresh of one selector.
func (t *tracker) longestGap(n int) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	var longest time.Duration
	for _, s := range t.selectors {
		if len(s.refreshes) > n {
			longest = max(longest, s.refreshes[n].Sub(s.refreshes[n-1]))
		}
	}
	return longest
}

// notSynced counts the selectors whose Ready condition is not Synced, the ones not seen yet
// included.
func (t *tracker) notSynced() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.want - len(t.selectors)
	for _, s := range t.selectors {
		if !s.synced {
			n++
		}
	}
	return n
}

// waitSynced waits until every selector's Ready condition is Synced.
func (t *tracker) waitSynced(ctx context.Context, timeout time.Duration) error {
	return poll(ctx, timeout, "every selector Synced", func() (bool, string) {
		n := t.notSynced()
		return n == 0, fmt.Sprintf("%d of %d not Synced", n, t.want)
	})
}

// refreshesBetween counts the refreshes seen from from until to: all of them, and the fewest
// of one selector.
func (t *tracker) refreshesBetween(from, to time.Time) (total, fewest int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fewest = math.MaxInt
	for _, s := range t.selectors {
		n := 0
		for _, at := range s.refreshes {
			if !at.Before(from) && !at.After(to) {
				n++
			}
		}
		total += n
		fewest = min(fewest, n)
	}
	if len(t.selectors) < t.want {
		fewest = 0
	}
	return total, fewest
}

// waitFor waits until every selector has a time by of, and returns the latest.
func (t *tracker) waitFor(ctx context.Context, timeout time.Duration, what string, of func(*selectorState) time.Time) (time.Time, error) {
	var last time.Time
	err := poll(ctx, timeout, "every selector "+what, func() (bool, string) {
		n, at := t.count(of)
		last = at
		return n == t.want, fmt.Sprintf("%d of %d", n, t.want)
	})
	return last, err
}

// poll calls check every pollInterval until it reports done, for at most timeout; the last
// state check described goes into the error.
func poll(ctx context.Context, timeout time.Duration, what string, check func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		done, state := check()
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: not within %s (%s)", what, timeout, state)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s (%s): %w", what, state, context.Cause(ctx))
		case <-ticker.C:
		}
	}
}
