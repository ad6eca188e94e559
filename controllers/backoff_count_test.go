package controllers

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/keysource"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/kms/kmstest"
)

// This file derives, from the real backoff function, the bounds that the envtest fault matrix
// (faults_test.go) asserts, and computes what a failure costs in KMS calls. The exported names
// below exist for package controllers_test only (test files are not part of the build).

// BackoffRange is the least and the most delay backoff returns after failures consecutive
// failures: equal jitter over base doubled per failure, capped at ceiling. Tests check it
// against samples of backoff (TestBackoffRangeBoundsTheRealBackoff), so it cannot drift from it.
func BackoffRange(failures int, base, ceiling time.Duration) (lo, hi time.Duration) {
	d := base
	for i := 1; i < failures && d < ceiling; i++ {
		d *= 2
	}
	d = min(d, ceiling)
	return d / 2, d
}

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
	// CallsPerAttempt is what one listing costs under the fault, measured with the real client.
	CallsPerAttempt int
	// Healthy is the number of listings a healthy selector makes in the same window.
	Healthy int
	// EarlySteps is EarlyBackoffSteps.
	EarlySteps int
}

func (c FailureCost) String() string {
	return fmt.Sprintf("%d calls per listing; listings min %d, mean %.1f, max %d (worst case %d) => KMS calls min %d, mean %.1f, worst %d; healthy selector: %d listings; early backoff steps: %d",
		c.CallsPerAttempt, c.AttemptsMin, c.AttemptsMean, c.AttemptsMax, c.AttemptsWorst,
		c.AttemptsMin*c.CallsPerAttempt, c.AttemptsMean*float64(c.CallsPerAttempt), c.AttemptsWorst*c.CallsPerAttempt,
		c.Healthy, c.EarlySteps)
}

// SimulateFailure runs the reconciler's schedule (schedule.go: a listing, then state.failed's
// backoff, again and again) over window with the real backoff function, runs times, and the
// healthy schedule (state.succeeded's jitter of the interval) for comparison. attempt is how
// long one failing listing takes; callsPerAttempt what it costs.
func SimulateFailure(window, interval, base, attempt time.Duration, callsPerAttempt, runs int) FailureCost {
	c := FailureCost{AttemptsMin: math.MaxInt, CallsPerAttempt: callsPerAttempt, EarlySteps: EarlyBackoffSteps(base, interval)}
	total := 0
	for range runs {
		now := time.Unix(0, 0)
		end := now.Add(window)
		st := &selectorState{}
		n := 0
		for now.Before(end) {
			n++
			now = now.Add(attempt)
			now = now.Add(st.failed(now, base, interval))
		}
		c.AttemptsMin, c.AttemptsMax = min(c.AttemptsMin, n), max(c.AttemptsMax, n)
		total += n

		healthy, t := 0, time.Unix(0, 0)
		for t.Before(end) {
			healthy++
			st.succeeded(nil, t, interval)
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

func TestBackoffRangeBoundsTheRealBackoff(t *testing.T) {
	for _, c := range []struct{ base, ceiling time.Duration }{
		{300 * time.Millisecond, 5 * time.Minute}, {300 * time.Millisecond, 10 * time.Second},
		{5 * time.Second, time.Minute}, {5 * time.Second, 5 * time.Minute},
	} {
		for failures := 1; failures <= 14; failures++ {
			lo, hi := BackoffRange(failures, c.base, c.ceiling)
			least, most := time.Duration(math.MaxInt64), time.Duration(0)
			for range 4000 {
				d := backoff(failures, c.base, c.ceiling)
				least, most = min(least, d), max(most, d)
			}
			if least < lo || most > hi {
				t.Fatalf("backoff(%d, %v, %v) drew [%v, %v], outside BackoffRange [%v, %v]", failures, c.base, c.ceiling, least, most, lo, hi)
			}
			// The range is tight: samples come close to both ends.
			if slack := (hi - lo) / 20; least > lo+slack || most < hi-slack {
				t.Fatalf("backoff(%d, %v, %v) drew [%v, %v], BackoffRange [%v, %v] is not tight", failures, c.base, c.ceiling, least, most, lo, hi)
			}
		}
	}
}

func TestMaxSyncAttempts(t *testing.T) {
	base, ceiling := 300*time.Millisecond, 5*time.Minute
	// Shortest delays 150ms, 300ms, 600ms, 1.2s, 2.4s: cumulative 0.15, 0.45, 1.05, 2.25, 4.65s.
	for window, want := range map[time.Duration]int{
		0: 1, 100 * time.Millisecond: 1, 150 * time.Millisecond: 2, time.Second: 3, 1050 * time.Millisecond: 4,
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
			cost := SimulateFailure(window, interval, cfg.base, took, calls, 5000)
			t.Logf("%s, KMS answering %s for %v, refresh interval %v: %s", cfg.name, f.name, window, interval, cost)
			if f.fault.Kind == kmstest.FaultKMSError {
				// A broken credential must not cost more than a healthy selector plus the early retries.
				if bound := cost.Healthy + cost.EarlySteps; cost.AttemptsWorst > bound || cost.AttemptsMean > float64(bound) {
					t.Errorf("%s: a selector with a broken credential makes up to %d (mean %.1f) KMS calls in %v, more than a healthy one (%d) plus the early backoff steps (%d): "+
						"once capped at the refresh interval, equal jitter retries every %v..%v, faster than the healthy refresh of %v..%v",
						cfg.name, cost.AttemptsWorst, cost.AttemptsMean, window, cost.Healthy, cost.EarlySteps,
						interval/2, interval, interval, interval+interval/10)
				}
			}
		}
	}
}
