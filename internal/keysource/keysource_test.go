package keysource

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// gatedLister counts listings and holds each until release is closed.
type gatedLister struct {
	calls   atomic.Int64
	release chan struct{}
	err     error
	// started is closed when the first listing begins.
	started   chan struct{}
	startOnce sync.Once
}

func (g *gatedLister) ListKeys(ctx context.Context, _ Request) ([]kms.Key, error) {
	g.calls.Add(1)
	g.startOnce.Do(func() {
		if g.started != nil {
			close(g.started)
		}
	})
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if g.err != nil {
		return nil, g.err
	}
	return []kms.Key{{ID: "k1"}}, nil
}

func request(token string) Request {
	return Request{Endpoint: "https://kms.example", ProjectID: "p", PageSize: 1000,
		Credentials: kms.Credentials{Token: token},
		Filter:      kms.Filter{Tags: []kms.TagFilter{{Key: "env", Values: []string{"prod", "dev"}}}}}
}

func TestCoalescingSharesOneListingBetweenConcurrentIdenticalRequests(t *testing.T) {
	next := &gatedLister{release: make(chan struct{}), started: make(chan struct{})}
	var coalesced atomic.Int64
	c := &Coalescing{Next: next, TTL: time.Minute, OnCoalesced: func() { coalesced.Add(1) }}

	const callers = 50
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := request("t")
			if i%2 == 1 { // the same question in another order
				req.Filter.Tags[0].Values = []string{"dev", "prod"}
			}
			keys, err := c.ListKeys(context.Background(), req)
			if err == nil && len(keys) != 1 {
				err = errors.New("wrong keys")
			}
			errs <- err
		}()
	}
	// Let the listing finish once it is in flight; callers that come later take its result from
	// the cache, so every caller is served by that one listing either way.
	<-next.started
	close(next.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := next.calls.Load(); got != 1 {
		t.Errorf("listings = %d, want 1", got)
	}
	if got := coalesced.Load(); got != callers-1 {
		t.Errorf("coalesced = %d, want %d", got, callers-1)
	}
}

func TestCoalescingKeepsCredentialsApart(t *testing.T) {
	next := &gatedLister{release: make(chan struct{})}
	close(next.release)
	c := &Coalescing{Next: next, TTL: time.Minute}
	for _, token := range []string{"alice", "bob", "alice", "bob"} {
		if _, err := c.ListKeys(context.Background(), request(token)); err != nil {
			t.Fatal(err)
		}
	}
	if got := next.calls.Load(); got != 2 {
		t.Errorf("listings = %d, want one per credential (2)", got)
	}
}

func TestCoalescingCachesForTTLOnlyAndNeverCachesFailures(t *testing.T) {
	next := &gatedLister{release: make(chan struct{}), err: errors.New("boom")}
	close(next.release)
	now := time.Unix(1000, 0)
	c := &Coalescing{Next: next, TTL: 5 * time.Second, now: func() time.Time { return now }}
	list := func(fresh bool) error {
		req := request("t")
		req.Fresh = fresh
		_, err := c.ListKeys(context.Background(), req)
		return err
	}

	for range 2 {
		if err := list(false); err == nil {
			t.Fatal("a failure was not returned")
		}
	}
	next.err = nil
	for range 3 {
		if err := list(false); err != nil {
			t.Fatal(err)
		}
	}
	if got := next.calls.Load(); got != 3 {
		t.Fatalf("listings = %d, want 2 failures and 1 success", got)
	}
	if err := list(true); err != nil {
		t.Fatal(err)
	}
	if got := next.calls.Load(); got != 4 {
		t.Fatalf("a fresh request took the cache: listings = %d, want 4", got)
	}
	now = now.Add(5 * time.Second)
	if err := list(false); err != nil {
		t.Fatal(err)
	}
	if got := next.calls.Load(); got != 5 {
		t.Fatalf("an expired listing was reused: listings = %d, want 5", got)
	}
}

func TestRateLimitCapsCallsAcrossClients(t *testing.T) {
	srv := kmstest.NewServer(kmstest.WithToken("t"), kmstest.WithKeys(kmstest.GenerateKeys(3, nil)...))
	defer srv.Close()
	// One call a minute with a burst of 3: of 10 listings in 300ms, exactly 3 reach KMS.
	d := NewDirect(kms.Config{Retry: kms.RetryPolicy{MaxAttempts: 1}}, 1.0/60, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var ok, limited int
	for range 10 {
		req := request("t")
		req.Endpoint, req.ProjectID, req.Filter = srv.URL, kmstest.DefaultProjectID, kms.Filter{}
		_, err := d.ListKeys(ctx, req)
		switch {
		case err == nil:
			ok++
		case strings.Contains(err.Error(), "rate limit"):
			limited++
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if ok != 3 || limited != 7 || srv.Stats().Total != 3 {
		t.Errorf("ok=%d limited=%d served=%d, want 3, 7, 3", ok, limited, srv.Stats().Total)
	}
}

func TestPhaseIgnoresCredentialsAndOrder(t *testing.T) {
	a, b := request("alice"), request("bob")
	b.Filter.Tags[0].Values = []string{"dev", "prod"}
	if a.Phase() != b.Phase() {
		t.Error("the same question got different phases")
	}
	c := request("alice")
	c.Filter.Tags[0].Key = "team"
	if a.Phase() == c.Phase() {
		t.Error("different questions got the same phase")
	}
	if identity(a) == identity(request("bob")) {
		t.Error("different credentials got the same identity")
	}
}

func TestCoalescingServesLateMembersOfASlot(t *testing.T) {
	next := &gatedLister{release: make(chan struct{})}
	close(next.release)
	now := time.Unix(1000, 0)
	c := &Coalescing{Next: next, TTL: 5 * time.Second, now: func() time.Time { return now }}
	slot := now
	list := func(notBefore time.Time) {
		t.Helper()
		req := request("t")
		req.NotBefore = notBefore
		if _, err := c.ListKeys(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	list(slot)                      // the first member of the slot lists
	now = now.Add(time.Second)      // a second member, within TTL
	list(slot)                      //
	now = now.Add(20 * time.Second) // a straggler, served 21s late
	list(slot)
	if got := next.calls.Load(); got != 1 {
		t.Fatalf("listings = %d, want 1 for the whole slot", got)
	}
	list(time.Time{}) // an unscheduled request past TTL lists again
	if got := next.calls.Load(); got != 2 {
		t.Fatalf("listings = %d, want 2", got)
	}
	now = now.Add(2 * time.Minute)
	list(slot) // beyond the group window, even the slot's own listing is not reused
	if got := next.calls.Load(); got != 3 {
		t.Fatalf("listings = %d, want 3", got)
	}
}
