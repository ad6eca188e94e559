package keysource

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	c := &Coalescing{Next: next, TTL: 5 * time.Second, Now: func() time.Time { return now }}
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
	c := &Coalescing{Next: next, TTL: 5 * time.Second, Now: func() time.Time { return now }}
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

// waitForWaiters blocks until the flight for req has n waiters.
func waitForWaiters(t *testing.T, c *Coalescing, req Request, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		f := c.flights[identity(req)]
		got := 0
		if f != nil {
			got = f.waiters
		}
		c.mu.Unlock()
		if got == n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("the flight never had %d waiters", n)
}

func TestSharedListingOutlivesTheCallerThatStartedIt(t *testing.T) {
	next := &gatedLister{release: make(chan struct{}), started: make(chan struct{})}
	c := &Coalescing{Next: next, TTL: time.Minute}
	leaderCtx, cancelLeader := context.WithCancel(context.Background())
	leader := make(chan error, 1)
	go func() { _, err := c.ListKeys(leaderCtx, request("t")); leader <- err }()
	<-next.started
	follower := make(chan error, 1)
	go func() { _, err := c.ListKeys(context.Background(), request("t")); follower <- err }()
	waitForWaiters(t, c, request("t"), 2)

	cancelLeader() // the leader's sync timeout expires
	if err := <-leader; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader: err = %v, want its own context's error", err)
	}
	close(next.release)
	if err := <-follower; err != nil {
		t.Fatalf("the follower failed with the leader's context: %v", err)
	}
	if got := next.calls.Load(); got != 1 {
		t.Errorf("listings = %d, want 1", got)
	}
}

func TestSharedListingStopsWhenEveryCallerHasGivenUp(t *testing.T) {
	next := &gatedLister{release: make(chan struct{}), started: make(chan struct{})}
	c := &Coalescing{Next: next, TTL: time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := c.ListKeys(ctx, request("t")); done <- err }()
	<-next.started
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want the caller's context error", err)
	}
	// The abandoned listing was cancelled, so a new caller starts a listing of its own rather
	// than joining one that can only fail.
	close(next.release)
	if _, err := c.ListKeys(context.Background(), request("t")); err != nil {
		t.Fatalf("a caller after the abandoned listing failed: %v", err)
	}
	if got := next.calls.Load(); got != 2 {
		t.Errorf("listings = %d, want 2", got)
	}
}

// gate holds each listing until release is closed, then lists with next.
type gate struct {
	next      Lister
	release   chan struct{}
	started   chan struct{}
	startOnce sync.Once
}

func (g *gate) ListKeys(ctx context.Context, req Request) ([]kms.Key, error) {
	g.startOnce.Do(func() { close(g.started) })
	<-g.release
	return g.next.ListKeys(ctx, req)
}

func TestSharedListingRetriesAsOftenAsItsMostPatientCaller(t *testing.T) {
	for _, patientJoins := range []bool{false, true} {
		srv := kmstest.NewServer(kmstest.WithToken("t"), kmstest.WithKeys(kmstest.GenerateKeys(3, nil)...))
		if err := srv.InjectFault(kmstest.Fault{Kind: kmstest.FaultServerError, Status: 503, Times: 1}); err != nil {
			t.Fatal(err)
		}
		direct := NewDirect(kms.Config{Retry: kms.RetryPolicy{BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}}, 0, 1)
		g := &gate{next: direct, release: make(chan struct{}), started: make(chan struct{})}
		c := &Coalescing{Next: g, TTL: time.Minute}
		req := request("t")
		req.Endpoint, req.ProjectID, req.Filter = srv.URL, kmstest.DefaultProjectID, kms.Filter{}

		failing := req
		failing.MaxAttempts = 1 // a selector in backoff makes one attempt per listing
		first := make(chan error, 1)
		go func() { _, err := c.ListKeys(context.Background(), failing); first <- err }()
		<-g.started
		second := make(chan error, 1)
		if patientJoins {
			go func() { _, err := c.ListKeys(context.Background(), req); second <- err }()
			waitForWaiters(t, c, req, 2)
		}
		close(g.release)
		err := <-first
		switch {
		case patientJoins && err != nil:
			t.Errorf("with a patient caller joined, the shared listing gave up after one attempt: %v", err)
		case patientJoins:
			if err := <-second; err != nil {
				t.Errorf("the patient caller failed: %v", err)
			}
		case err == nil:
			t.Error("alone, the single-attempt listing retried")
		}
		wantCalls := map[bool]int64{false: 1, true: 2}[patientJoins]
		if got := srv.Stats().Total; got != wantCalls {
			t.Errorf("patient caller joined=%v: KMS calls = %d, want %d", patientJoins, got, wantCalls)
		}
		srv.Close()
	}
}

func TestFreshRequestTakesOnlyAListingMadeSinceItsTime(t *testing.T) {
	next := &gatedLister{release: make(chan struct{})}
	close(next.release)
	now := time.Unix(1000, 0)
	c := &Coalescing{Next: next, TTL: 5 * time.Second, Now: func() time.Time { return now }}
	list := func(notBefore time.Time, fresh bool) {
		t.Helper()
		req := request("t")
		req.NotBefore, req.Fresh = notBefore, fresh
		if _, err := c.ListKeys(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	list(time.Time{}, false) // listed at 1000s
	now = now.Add(time.Second)
	seen := now
	list(seen, true) // a force-sync seen at 1001s: the listing of 1000s is recent, but older
	if got := next.calls.Load(); got != 2 {
		t.Fatalf("listings = %d, want 2: a force-sync took a listing older than itself", got)
	}
	now = now.Add(30 * time.Second)
	list(seen, true) // its retry, past the TTL, takes the listing made for it
	if got := next.calls.Load(); got != 2 {
		t.Fatalf("listings = %d, want 2: the retry listed again", got)
	}
}

// A listing that began before a force-sync may have missed the change the user asks about, even
// when it ends after the request: neither its flight nor its cache entry may answer it.
func TestFreshRequestNeverTakesAListingBegunBeforeIt(t *testing.T) {
	next := &gatedLister{release: make(chan struct{}), started: make(chan struct{})}
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }
	c := &Coalescing{Next: next, TTL: 5 * time.Second, Now: clock}

	scheduled := make(chan error, 1)
	go func() { _, err := c.ListKeys(context.Background(), request("t")); scheduled <- err }()
	<-next.started // a scheduled listing is in flight, begun at 1000s
	advance(time.Second)
	forced := make(chan error, 1)
	go func() {
		req := request("t")
		req.NotBefore, req.Fresh = clock(), true // a force-sync seen at 1001s
		_, err := c.ListKeys(context.Background(), req)
		forced <- err
	}()
	// The force-sync starts a listing of its own rather than joining the one in flight.
	waitFor(t, func() bool { return next.calls.Load() == 2 })
	close(next.release)
	for _, ch := range []chan error{scheduled, forced} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}

	// A retry whose NotBefore is zero takes no listing begun before it, not even a cached one
	// that is younger than the TTL.
	retry := request("t")
	retry.Fresh = true
	advance(time.Second)
	if _, err := c.ListKeys(context.Background(), retry); err != nil {
		t.Fatal(err)
	}
	if got := next.calls.Load(); got != 3 {
		t.Fatalf("listings = %d, want 3: a retry took a listing begun before it", got)
	}
}

// The cache stamps a listing with its start: one begun before a request's NotBefore does not
// answer it, however late it ended.
func TestCacheStampsAListingWithItsStart(t *testing.T) {
	release := make(chan struct{})
	next := &gatedLister{release: release, started: make(chan struct{})}
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	c := &Coalescing{Next: next, TTL: 5 * time.Second, Now: clock}
	done := make(chan error, 1)
	go func() { _, err := c.ListKeys(context.Background(), request("t")); done <- err }()
	<-next.started
	mu.Lock()
	now = now.Add(3 * time.Second) // the listing ends at 1003s
	mu.Unlock()
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	req := request("t")
	req.NotBefore, req.Fresh = time.Unix(1002, 0), true // asked at 1002s, while it ran
	if _, err := c.ListKeys(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if got := next.calls.Load(); got != 2 {
		t.Fatalf("listings = %d, want 2: a listing begun at 1000s answered a request of 1002s", got)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// countingLister answers at once and counts listings per credential token.
type countingLister struct {
	mu    sync.Mutex
	calls map[string]int
}

func (l *countingLister) ListKeys(_ context.Context, req Request) ([]kms.Key, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.calls == nil {
		l.calls = map[string]int{}
	}
	l.calls[req.Credentials.Token]++
	return []kms.Key{{ID: "k1"}}, nil
}

func (l *countingLister) count(token string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls[token]
}

func mustList(t *testing.T, c *Coalescing, req Request) {
	t.Helper()
	if _, err := c.ListKeys(context.Background(), req); err != nil {
		t.Fatal(err)
	}
}

func cachedListings(c *Coalescing) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cache)
}

func scheduled(token string, slot time.Time) Request {
	req := request(token)
	req.NotBefore = slot
	return req
}

func TestCoalescingDropsTheListingsOfAQuestionAskedAlone(t *testing.T) {
	next := &countingLister{}
	now := time.Unix(1000, 0)
	c := &Coalescing{Next: next, TTL: 5 * time.Second, Now: func() time.Time { return now }}
	for i := range 4 {
		mustList(t, c, scheduled("t", now))
		switch kept := cachedListings(c); {
		case i == 0 && kept != 1:
			t.Fatalf("the first listing of a question was not kept")
		case i > 0 && kept != 0:
			t.Fatalf("refresh %d: a listing of a question asked alone was kept", i)
		}
		now = now.Add(10 * time.Second)
	}
	if got := next.count("t"); got != 4 {
		t.Fatalf("listings = %d, want one per refresh (4)", got)
	}

	// A force-sync of that question is still kept, so that its retry reuses it.
	seen := now
	forced := request("t")
	forced.NotBefore, forced.Fresh = seen, true
	mustList(t, c, forced)
	now = now.Add(30 * time.Second)
	mustList(t, c, forced)
	if got := next.count("t"); got != 5 {
		t.Fatalf("listings = %d, want 5: the retry of a force-sync listed again", got)
	}
}

func TestCoalescingKeepsListingsAgainOnceASecondSelectorAsks(t *testing.T) {
	next := &countingLister{}
	now := time.Unix(1000, 0)
	c := &Coalescing{Next: next, TTL: 5 * time.Second, Now: func() time.Time { return now }}
	slot := now
	for range 2 { // one selector alone: its question is marked as asked alone
		now = slot
		mustList(t, c, scheduled("t", slot))
		slot = slot.Add(10 * time.Second)
	}
	if cachedListings(c) != 0 {
		t.Fatal("the question was not marked as asked alone")
	}
	// A second selector of the question refreshes on the same slot, a second after the first,
	// never while the first one's listing is in flight.
	for i := range 4 {
		now = slot
		mustList(t, c, scheduled("t", slot))
		now = slot.Add(time.Second)
		mustList(t, c, scheduled("t", slot))
		// Two listings before, two on the first slot as the second selector misses the dropped
		// listing, then one a slot for both.
		want := 4 + i
		if got := next.count("t"); got != want {
			t.Fatalf("slot %d with two selectors: listings = %d, want %d", i, got, want)
		}
		slot = slot.Add(10 * time.Second)
	}
}

func TestCoalescingKeepsTheFirstListingOfANewQuestion(t *testing.T) {
	next := &countingLister{}
	now := time.Unix(1000, 0)
	c := &Coalescing{Next: next, TTL: 5 * time.Second, Now: func() time.Time { return now }}
	// Another question asked alone, listed every two seconds meanwhile, keeps the cache pruned.
	other := func() { mustList(t, c, request("other")) }
	other()
	now = now.Add(10 * time.Second)
	other()

	// 100 selectors of a new question, created together and reached one after another over 20s.
	const selectors = 100
	created := now
	for i := range selectors {
		now = created.Add(time.Duration(i) * 200 * time.Millisecond)
		if i%10 == 0 {
			other()
		}
		mustList(t, c, scheduled("shared", created.Add(-30*time.Second)))
	}
	if got := next.count("shared"); got != 1 {
		t.Fatalf("first sync: listings = %d, want 1 for all %d selectors", got, selectors)
	}
	// Their refreshes, one after another within the TTL, cost one listing a slot.
	slot := created.Add(30 * time.Second)
	for i := range 3 {
		for j := range selectors {
			now = slot.Add(time.Duration(j) * 40 * time.Millisecond)
			if j%10 == 0 {
				other()
			}
			mustList(t, c, scheduled("shared", slot))
		}
		if got := next.count("shared"); got != 2+i {
			t.Fatalf("refresh %d: listings = %d, want %d", i, got, 2+i)
		}
		slot = slot.Add(10 * time.Second)
	}
}

func TestCoalescingHoldsNoListingOfQuestionsAskedAlone(t *testing.T) {
	next := &countingLister{}
	now := time.Unix(1000, 0)
	c := &Coalescing{Next: next, TTL: 5 * time.Second, Now: func() time.Time { return now }}
	const questions = 200
	for range 2 {
		for i := range questions {
			mustList(t, c, request(fmt.Sprint("q", i)))
		}
		now = now.Add(10 * time.Second)
	}
	if got := cachedListings(c); got != 0 {
		t.Fatalf("%d listings are held for %d questions asked alone, want 0", got, questions)
	}
	// Questions nobody asks any more are forgotten too.
	now = now.Add(groupWindow)
	mustList(t, c, request("new"))
	c.mu.Lock()
	marks := len(c.alone)
	c.mu.Unlock()
	if marks != 0 {
		t.Fatalf("%d questions not asked for a minute are still remembered, want 0", marks)
	}
}

func TestCoalescingKeepsAListingJoinedInFlight(t *testing.T) {
	next := &gatedLister{release: make(chan struct{}), started: make(chan struct{})}
	now := time.Unix(1000, 0)
	c := &Coalescing{Next: next, TTL: 5 * time.Second, Now: func() time.Time { return now }}
	c.mu.Lock()
	c.markAlone(identity(request("t")), now.Add(-10*time.Second))
	c.mu.Unlock()

	done := make(chan error, 2)
	go func() { _, err := c.ListKeys(context.Background(), request("t")); done <- err }()
	<-next.started
	go func() { _, err := c.ListKeys(context.Background(), request("t")); done <- err }()
	waitForWaiters(t, c, request("t"), 2)
	close(next.release)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	mustList(t, c, request("t"))
	if got := next.calls.Load(); got != 1 {
		t.Fatalf("listings = %d, want 1: a listing two requests shared was not kept", got)
	}
}

func TestOnListedNamesTheTriggerOfTheRequestThatBeganTheListing(t *testing.T) {
	var listed []Trigger
	c := &Coalescing{Next: &countingLister{}, OnListed: func(tr Trigger, _ time.Duration, _ error) { listed = append(listed, tr) }}
	refresh, first := request("t"), request("t")
	refresh.Trigger, first.Trigger = TriggerRefresh, TriggerFirstSync
	mustList(t, c, refresh)
	mustList(t, c, first) // answered by the refresh's listing
	forced := request("t")
	forced.Trigger, forced.Fresh = TriggerForceSync, true
	mustList(t, c, forced)
	if want := []Trigger{TriggerRefresh, TriggerForceSync}; !slices.Equal(listed, want) {
		t.Errorf("listings reported as %v, want %v", listed, want)
	}
}
