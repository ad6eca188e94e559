package controllers

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/keysource"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// This file derives, from the real backoff function, the bounds that the envtest fault matrix
// (faults_test.go) asserts, and computes what a failure costs in KMS calls. The exported names
// below exist for package controllers_test only (test files are not part of the build).

// BackoffRange is the least and the most delay the real backoff function returns after failures
// consecutive failures. It samples backoff rather than restating its formula, so the bounds the
// fault matrix asserts follow the function wherever it goes; the margin (a fiftieth of the range)
// covers the ends the samples may miss.
func BackoffRange(failures int, base, ceiling time.Duration) (lo, hi time.Duration) {
	key := [3]int64{int64(failures), int64(base), int64(ceiling)}
	backoffRangesMu.Lock()
	defer backoffRangesMu.Unlock()
	if r, ok := backoffRanges[key]; ok {
		return r[0], r[1]
	}
	lo = time.Duration(math.MaxInt64)
	for range 4000 {
		d := backoff(failures, base, ceiling)
		lo, hi = min(lo, d), max(hi, d)
	}
	margin := (hi - lo) / 50
	lo, hi = max(lo-margin, 0), hi+margin
	backoffRanges[key] = [2]time.Duration{lo, hi}
	return lo, hi
}

var (
	backoffRangesMu sync.Mutex
	backoffRanges   = map[[3]int64][2]time.Duration{}
)

// MaxSyncAttempts is the most listings a failing selector can start within window: the first
// one, plus one per backoff step whose shortest delay still fits. Time spent listing only makes
// the true number smaller.
func MaxSyncAttempts(window, base, ceiling time.Duration) int {
	attempts := 1
	var elapsed time.Duration
	for n := 1; ; n++ {
		lo, _ := BackoffRange(n, base, ceiling)
		if elapsed += lo; elapsed > window {
			return attempts
		}
		attempts++
	}
}

// EarlyBackoffSteps is the number of backoff steps whose full delay is still below the refresh
// interval, that is the retries a failing selector makes before it slows to the interval.
func EarlyBackoffSteps(base, ceiling time.Duration) int {
	n := 0
	for f := 1; ; f++ {
		if _, hi := BackoffRange(f, base, ceiling); hi >= ceiling {
			return n
		}
		n++
	}
}

// RecoveryTimeout is how long a selector that has been failing for window can take to list again
// once the fault clears: the longest delay of the backoff step it may have reached, plus one
// attempt that was already under way, plus slack for the API server.
func RecoveryTimeout(window, base, ceiling, attempt time.Duration) time.Duration {
	_, hi := BackoffRange(MaxSyncAttempts(window, base, ceiling), base, ceiling)
	return hi + attempt + 3*time.Second
}

// FailureCost is what a selector's failure costs over a window.
type FailureCost struct {
	// Attempts are listings started: the fewest, the mean and the most over many runs of the
	// real (jittered) backoff, and the most that the shortest delays allow.
	AttemptsMin, AttemptsMax, AttemptsWorst int
	AttemptsMean                            float64
	// FirstCalls is what the first failing listing costs, with the client's retries;
	// LaterCalls what each retry costs, made with one attempt per listing (the reconciler's
	// backoff being the retry policy). Both are measured with the real client.
	FirstCalls, LaterCalls int
	// Healthy is the number of listings a healthy selector makes in the same window.
	Healthy int
	// EarlySteps is EarlyBackoffSteps.
	EarlySteps int
}

// Calls is the KMS calls of n failing listings.
func (c FailureCost) Calls(n float64) float64 {
	return float64(c.FirstCalls) + (n-1)*float64(c.LaterCalls)
}

func (c FailureCost) String() string {
	return fmt.Sprintf("%d calls for the first listing, %d for each retry; listings min %d, mean %.1f, max %d (worst case %d) => KMS calls min %.0f, mean %.1f, worst %.0f; healthy selector: %d listings; early backoff steps: %d",
		c.FirstCalls, c.LaterCalls, c.AttemptsMin, c.AttemptsMean, c.AttemptsMax, c.AttemptsWorst,
		c.Calls(float64(c.AttemptsMin)), c.Calls(c.AttemptsMean), c.Calls(float64(c.AttemptsWorst)),
		c.Healthy, c.EarlySteps)
}

// SimulateFailure runs the reconciler's schedule (schedule.go: a listing, then state.failed's
// backoff, again and again) over window with the real backoff function, runs times, and the
// healthy schedule (state.succeeded's slots, at a random phase) for comparison. attempt is how
// long one failing listing takes; firstCalls and laterCalls what the first and each later one cost.
func SimulateFailure(window, interval, base, attempt time.Duration, firstCalls, laterCalls, runs int) FailureCost {
	c := FailureCost{AttemptsMin: math.MaxInt, FirstCalls: firstCalls, LaterCalls: laterCalls, EarlySteps: EarlyBackoffSteps(base, interval)}
	total := 0
	for range runs {
		now := time.Unix(0, 0)
		end := now.Add(window)
		st := &selectorState{}
		n := 0
		for now.Before(end) {
			n++
			now = now.Add(attempt)
			now = now.Add(st.failed(now, base, interval, 0))
		}
		c.AttemptsMin, c.AttemptsMax = min(c.AttemptsMin, n), max(c.AttemptsMax, n)
		total += n

		healthy, t, phase := 0, time.Unix(0, 0), rand.Uint64()
		var listed content
		for t.Before(end) {
			healthy++
			st.succeeded(listed, t, interval, phase, healthy > 1)
			t = st.nextSync
		}
		c.Healthy = max(c.Healthy, healthy)
	}
	c.AttemptsMean = float64(total) / float64(runs)
	// The worst case takes the shortest delay of every step.
	now, n := time.Duration(0), 0
	for now < window {
		n++
		lo, _ := BackoffRange(n, base, interval)
		now += attempt + lo
	}
	c.AttemptsWorst = n
	return c
}

// MeasureCallsPerListing lists keys once with the real client (through keysource.Direct, as the
// operator does) against an emulator that answers every request with fault, and returns the
// number of requests the emulator received and how long the listing took.
func MeasureCallsPerListing(retry kms.RetryPolicy, fault kmstest.Fault) (int, time.Duration, error) {
	srv := kmstest.NewServer(kmstest.WithToken("measure-token"), kmstest.WithKeys(kmstest.GenerateKeys(3, nil)...))
	defer srv.Close()
	if err := srv.InjectFault(fault); err != nil {
		return 0, 0, err
	}
	src := keysource.NewDirect(kms.Config{Transport: http.DefaultTransport.(*http.Transport).Clone(), Retry: retry}, 0, 1)
	start := time.Now()
	_, err := src.ListKeys(context.Background(), keysource.Request{
		Endpoint: srv.URL, ProjectID: kmstest.DefaultProjectID,
		Credentials: kms.Credentials{Token: "measure-token"}, PageSize: kms.MaxPageSize,
	})
	elapsed := time.Since(start)
	if err == nil {
		return 0, 0, fmt.Errorf("listing succeeded despite fault %s", fault.Kind)
	}
	return int(srv.Stats().Total), elapsed, nil
}

// TestBackoffSchedule checks what the issue asks of the schedule: the first retry comes after
// about the base delay, the delay doubles with each failure (equal jitter: between half and all
// of it), and it never exceeds the refresh interval.
func TestBackoffSchedule(t *testing.T) {
	for _, c := range []struct{ base, ceiling time.Duration }{
		{300 * time.Millisecond, 5 * time.Minute}, {300 * time.Millisecond, 10 * time.Second},
		{5 * time.Second, time.Minute}, {5 * time.Second, 5 * time.Minute},
	} {
		full := c.base
		for failures := 1; failures <= 14; failures++ {
			lo, hi := BackoffRange(failures, c.base, c.ceiling)
			if want := min(full, c.ceiling); hi < want*95/100 || hi > want*105/100 {
				t.Errorf("backoff(%d, %v, %v) reaches %v, want about %v", failures, c.base, c.ceiling, hi, want)
			}
			if want := min(full/2, c.ceiling); lo < want*95/100 {
				t.Errorf("backoff(%d, %v, %v) goes down to %v, want at least half of %v", failures, c.base, c.ceiling, lo, full)
			}
			for range 1000 {
				if d := backoff(failures, c.base, c.ceiling); d > c.ceiling {
					t.Fatalf("backoff(%d, %v, %v) = %v, beyond the refresh interval", failures, c.base, c.ceiling, d)
				}
			}
			full *= 2
		}
	}
}

func TestMaxSyncAttempts(t *testing.T) {
	base, ceiling := 300*time.Millisecond, 5*time.Minute
	// Shortest delays about 150ms, 300ms, 600ms, 1.2s, 2.4s: cumulative 0.15, 0.45, 1.05, 2.25, 4.65s.
	for window, want := range map[time.Duration]int{
		0: 1, 100 * time.Millisecond: 1, 200 * time.Millisecond: 2, time.Second: 3, 1100 * time.Millisecond: 4,
		2 * time.Second: 4, 3 * time.Second: 5, 5 * time.Second: 6,
	} {
		if got := MaxSyncAttempts(window, base, ceiling); got != want {
			t.Errorf("MaxSyncAttempts(%v) = %d, want %d", window, got, want)
		}
	}
	if got := EarlyBackoffSteps(300*time.Millisecond, 10*time.Second); got != 6 {
		t.Errorf("EarlyBackoffSteps(300ms, 10s) = %d, want 6 (0.3, 0.6, 1.2, 2.4, 4.8, 9.6s)", got)
	}
	if got := EarlyBackoffSteps(5*time.Second, time.Minute); got != 4 {
		t.Errorf("EarlyBackoffSteps(5s, 1m) = %d, want 4 (5, 10, 20, 40s)", got)
	}
}

// TestFailureCallCounts is the closing note of the fault matrix: how many KMS calls a selector
// with a one-minute refresh interval makes while KMS fails for five minutes, with 403 (not
// retried by the client) and with 503 (retried), for the operator's defaults (main.go: backoff
// 5s, client MaxAttempts 4) and for the envtest suite's settings (backoff 300ms, MaxAttempts 2).
// The schedule is the real one; calls per listing are measured with the real client.
//
// It also asserts what the issue asks of the schedule: that over the window a selector with a
// broken credential calls KMS no more often than a healthy one, plus the early backoff steps.
func TestFailureCallCounts(t *testing.T) {
	const window, interval = 5 * time.Minute, time.Minute
	configs := []struct {
		name  string
		base  time.Duration
		retry kms.RetryPolicy
	}{
		{"operator defaults (backoff 5s, client retries: kms defaults)", 5 * time.Second, kms.RetryPolicy{}},
		{"envtest suite (backoff 300ms, MaxAttempts 2)", 300 * time.Millisecond,
			kms.RetryPolicy{MaxAttempts: 2, BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond}},
	}
	faults := []struct {
		name  string
		fault kmstest.Fault
		want  func(maxAttempts int) int
	}{
		{"403 KMS.0303", kmstest.Fault{Kind: kmstest.FaultKMSError, Code: "KMS.0303"}, func(int) int { return 1 }},
		{"503", kmstest.Fault{Kind: kmstest.FaultServerError, Status: http.StatusServiceUnavailable}, func(n int) int { return n }},
	}
	for _, cfg := range configs {
		maxAttempts := cfg.retry.MaxAttempts
		if maxAttempts == 0 {
			maxAttempts = kms.DefaultMaxAttempts
		}
		for _, f := range faults {
			calls, took, err := MeasureCallsPerListing(cfg.retry, f.fault)
			if err != nil {
				t.Fatal(err)
			}
			if calls != f.want(maxAttempts) {
				t.Errorf("%s, %s: one listing made %d KMS calls, want %d", cfg.name, f.name, calls, f.want(maxAttempts))
			}
			single := cfg.retry
			single.MaxAttempts = 1
			retryCalls, _, err := MeasureCallsPerListing(single, f.fault)
			if err != nil {
				t.Fatal(err)
			}
			if retryCalls != 1 {
				t.Errorf("%s, %s: a retry listing made %d KMS calls, want 1", cfg.name, f.name, retryCalls)
			}
			cost := SimulateFailure(window, interval, cfg.base, took, calls, retryCalls, 5000)
			t.Logf("%s, KMS answering %s for %v, refresh interval %v: %s", cfg.name, f.name, window, interval, cost)
			if f.fault.Kind == kmstest.FaultKMSError {
				// A broken credential must not cost more than a healthy selector plus the early retries.
				if bound := cost.Healthy + cost.EarlySteps; cost.Calls(float64(cost.AttemptsWorst)) > float64(bound) {
					t.Errorf("%s: a selector with a broken credential makes up to %d (mean %.1f) KMS calls in %v, more than a healthy one (%d) plus the early backoff steps (%d): "+
						"once capped at the refresh interval, equal jitter retries every %v..%v, faster than a healthy selector refreshes (every %v)",
						cfg.name, cost.AttemptsWorst, cost.AttemptsMean, window, cost.Healthy, cost.EarlySteps,
						interval/2, interval, interval)
				}
			}
		}
	}
}
