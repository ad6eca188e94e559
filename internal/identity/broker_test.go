package identity

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// countingSource hands out credentials of a fixed lifetime and counts its fetches; while gate
// is set, each fetch waits for it.
type countingSource struct {
	key      string
	lifetime time.Duration
	now      func() time.Time
	fetches  *atomic.Int64
	gate     chan struct{}
	fail     *atomic.Bool
}

func (s countingSource) Key() string { return s.key }

func (s countingSource) fetch(ctx context.Context, _ *Broker) (Temporary, error) {
	n := s.fetches.Add(1)
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return Temporary{}, ctx.Err()
		}
	}
	if s.fail != nil && s.fail.Load() {
		return Temporary{}, &Error{Method: "test", Step: "fetch", Status: 503}
	}
	return Temporary{
		Credentials: kms.Credentials{AccessKey: fmt.Sprintf("AK%d", n), SecretKey: "sk", SecurityToken: "st"},
		ExpiresAt:   s.now().Add(s.lifetime),
	}, nil
}

func newSource(clock *clocktesting.FakeClock, lifetime time.Duration) countingSource {
	return countingSource{key: "k", lifetime: lifetime, now: clock.Now, fetches: &atomic.Int64{}}
}

func TestRefreshMarginIsAQuarterOfTheLifetimeAndAtMostFortyMinutes(t *testing.T) {
	for lifetime, want := range map[time.Duration]time.Duration{
		2 * time.Minute: 30 * time.Second,
		time.Hour:       15 * time.Minute,
		6 * time.Hour:   40 * time.Minute,
		24 * time.Hour:  40 * time.Minute,
	} {
		if got := refreshMargin(lifetime); got != want {
			t.Errorf("refreshMargin(%s) = %s, want %s", lifetime, got, want)
		}
	}
}

func TestCredentialsAreCachedUntilTheirRefreshIsDue(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Unix(1_800_000_000, 0))
	b := &Broker{Now: clock.Now}
	src := newSource(clock, 2*time.Minute)
	ctx := context.Background()

	first, err := b.Credentials(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	// Every 10 s for 6 minutes, as a selector refreshing every 10 s would ask.
	seen := map[string]bool{first.AccessKey: true}
	for range 36 {
		clock.Step(10 * time.Second)
		c, err := b.Credentials(ctx, src)
		if err != nil {
			t.Fatal(err)
		}
		seen[c.AccessKey] = true
	}
	// 2-minute credentials are refreshed 30 s before they expire: at 0, 90, 180, 270 and
	// 360 s, 5 fetches for 37 calls.
	if got := src.fetches.Load(); got != 5 {
		t.Errorf("fetches in 6 minutes of 2-minute credentials = %d, want 5", got)
	}
	if len(seen) != 5 {
		t.Errorf("distinct credentials handed out = %d, want 5", len(seen))
	}
}

func TestOneIdentityIsFetchedOnceForManyConcurrentCallers(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Unix(1_800_000_000, 0))
	b := &Broker{Now: clock.Now}
	src := newSource(clock, time.Hour)
	src.gate = make(chan struct{})
	other := newSource(clock, time.Hour)
	other.key = "other"

	var wg sync.WaitGroup
	keys := make(chan string, 1000)
	for range 1000 {
		wg.Go(func() {
			c, err := b.Credentials(context.Background(), src)
			if err != nil {
				t.Error(err)
			}
			keys <- c.AccessKey
		})
	}
	if _, err := b.Credentials(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	close(src.gate)
	wg.Wait()
	close(keys)
	for k := range keys {
		if k != "AK1" {
			t.Fatalf("a caller got %q, want the one shared AK1", k)
		}
	}
	if got := src.fetches.Load(); got != 1 {
		t.Errorf("fetches for 1000 callers of one identity = %d, want 1", got)
	}
	if got := other.fetches.Load(); got != 1 {
		t.Errorf("fetches of another identity = %d, want its own 1", got)
	}
}

func TestFailuresAreNotCachedAndACallerMayGiveUpOnARefresh(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Unix(1_800_000_000, 0))
	b := &Broker{Now: clock.Now}
	src := newSource(clock, time.Hour)
	src.fail = &atomic.Bool{}
	src.fail.Store(true)

	var refreshes []string
	b.OnRefresh = func(method string, err error) { refreshes = append(refreshes, fmt.Sprint(method, " ", err == nil)) }
	_, err := b.Credentials(context.Background(), src)
	var e *Error
	if !errors.As(err, &e) || e.Status != 503 {
		t.Fatalf("err = %v, want the fetch's *Error", err)
	}
	if len(refreshes) != 1 || refreshes[0] != "identity false" {
		t.Errorf("OnRefresh saw %v, want one failed refresh", refreshes)
	}
	src.fail.Store(false)
	if _, err := b.Credentials(context.Background(), src); err != nil {
		t.Fatalf("after the failure: %v", err)
	}
	if got := src.fetches.Load(); got != 2 {
		t.Errorf("fetches = %d, want 2: a failure must not be cached", got)
	}

	// A caller that gives up returns at once; the refresh it started still serves the others.
	clock.Step(time.Hour)
	src.gate = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.Credentials(ctx, src); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: err = %v, want context.Canceled", err)
	}
	close(src.gate)
	c, err := b.Credentials(context.Background(), src)
	if err != nil || c.AccessKey != "AK3" {
		t.Fatalf("after the cancelled caller: %v, %v; want the refresh it started (AK3)", c.AccessKey, err)
	}
	if got := src.fetches.Load(); got != 3 {
		t.Errorf("fetches = %d, want 3", got)
	}
}

func TestCredentialsThatArriveExpiredAreRefused(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Unix(1_800_000_000, 0))
	b := &Broker{Now: clock.Now}
	src := newSource(clock, -time.Second)
	_, err := b.Credentials(context.Background(), src)
	if err == nil || !IsError(err) {
		t.Fatalf("err = %v, want an *Error about expired credentials", err)
	}
}

func TestErrorBodiesOfBothShapesAreRead(t *testing.T) {
	for body, want := range map[string][2]string{
		`{"error_code":"IAM.0007","error_msg":"no rule"}`:                                {"IAM.0007", "no rule"},
		`{"error":{"code":401,"message":"Please configure Cloud Service Agency first"}}`: {"401", "Please configure Cloud Service Agency first"},
		`{"error":{"code":"IAM.1","message":"m","title":"Unauthorized"}}`:                {"IAM.1", "m"},
		"plain text\n": {"", "plain text"},
	} {
		code, msg := errorBody([]byte(body))
		if code != want[0] || msg != want[1] {
			t.Errorf("errorBody(%s) = %q, %q; want %q, %q", body, code, msg, want[0], want[1])
		}
	}
}

func TestExpiredIdentitiesAreForgotten(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Unix(1_800_000_000, 0))
	b := &Broker{Now: clock.Now}
	old := newSource(clock, time.Minute)
	if _, err := b.Credentials(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	clock.Step(2 * time.Minute)
	other := newSource(clock, time.Minute)
	other.key = "other"
	if _, err := b.Credentials(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.entries[old.key]; ok || len(b.entries) != 1 {
		t.Errorf("entries = %d, holding the expired identity: %v; want only the new one", len(b.entries), ok)
	}
}

func TestAFailedRefreshKeepsCredentialsThatStillWork(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Unix(1_800_000_000, 0))
	var failures int
	b := &Broker{Now: clock.Now, OnRefresh: func(_ string, err error) {
		if err != nil {
			failures++
		}
	}}
	// One hour: refreshed from 45 minutes on, and still used after a failed refresh until
	// 52.5 minutes.
	src := newSource(clock, time.Hour)
	src.fail = &atomic.Bool{}
	first, err := b.Credentials(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}

	src.fail.Store(true)
	clock.Step(46 * time.Minute)
	c, err := b.Credentials(context.Background(), src)
	if err != nil || c.AccessKey != first.AccessKey {
		t.Fatalf("after a failed refresh within the margin: %v, %v; want the credentials in hand", c.AccessKey, err)
	}
	clock.Step(10 * time.Second)
	if _, err := b.Credentials(context.Background(), src); err != nil {
		t.Fatal(err)
	}
	if got := src.fetches.Load(); got != 2 {
		t.Errorf("fetches = %d, want 2: no new attempt within 30 s of a failed one", got)
	}
	clock.Step(30 * time.Second)
	if _, err := b.Credentials(context.Background(), src); err != nil {
		t.Fatal(err)
	}
	if got := src.fetches.Load(); got != 3 || failures != 2 {
		t.Errorf("fetches = %d, failures reported = %d; want 3 and 2", got, failures)
	}

	clock.Step(7 * time.Minute) // 53.7 minutes: too close to the expiry to keep using them
	if _, err := b.Credentials(context.Background(), src); err == nil {
		t.Error("credentials 6 minutes from expiry were used after a failed refresh")
	}
	src.fail.Store(false)
	c, err = b.Credentials(context.Background(), src)
	if err != nil || c.AccessKey == first.AccessKey {
		t.Errorf("once IAM answers again: %v, %v; want new credentials", c.AccessKey, err)
	}
}
