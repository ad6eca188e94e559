package controllers

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/keysource"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// This file computes, from the real retryDelay with its jitter at either end, the exact bounds
// that the envtest fault matrix (faults_test.go) asserts, and what a failure costs in KMS calls.
// The exported names exist for package controllers_test only (test files are not part of the
// build).

func noJitter(time.Duration) time.Duration     { return 0 }
func fullJitter(d time.Duration) time.Duration { return d }

// BackoffRange is the least and the most delay before retry number failures, as the status
// stores it: the retry waits for the whole second after its delay.
func BackoffRange(failures int, base, ceiling time.Duration) (lo, hi time.Duration) {
	return retryDelay(failures, base, ceiling, 0, noJitter), retryDelay(failures, base, ceiling, 0, fullJitter) + time.Second
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

// EarlyBackoffSteps is the number of backoff steps whose longest delay is still below the
// refresh interval: the retries a failing selector makes before it slows to the interval.
func EarlyBackoffSteps(base, ceiling time.Duration) int {
	n := 0
	for f := 1; retryDelay(f, base, ceiling, 0, fullJitter) < ceiling; f++ {
		n++
	}
	return n
}

// RecoveryTimeout is how long a selector that has been failing for window can take to list again
// once the fault clears: the longest delay of the backoff step it may have reached, plus one
// attempt that was already under way, plus slack for the API server.
func RecoveryTimeout(window, base, ceiling, attempt time.Duration) time.Duration {
	_, hi := BackoffRange(MaxSyncAttempts(window, base, ceiling), base, ceiling)
	return hi + attempt + 3*time.Second
}

// measureCallsPerListing lists keys once with the real client (through keysource.Direct, as the
// operator does) against an emulator that answers every request with fault, and returns the
// number of requests the emulator received. The client's own retry delays are a millisecond:
// they change when the calls are made, not how many.
func measureCallsPerListing(t *testing.T, maxAttempts int, fault kmstest.Fault) int {
	t.Helper()
	srv := kmstest.NewServer(kmstest.WithToken("measure-token"), kmstest.WithKeys(kmstest.GenerateKeys(3, nil)...))
	defer srv.Close()
	if err := srv.InjectFault(fault); err != nil {
		t.Fatal(err)
	}
	retry := kms.RetryPolicy{MaxAttempts: maxAttempts, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}
	src := keysource.NewDirect(kms.Config{Transport: http.DefaultTransport.(*http.Transport).Clone(), Retry: retry}, 0, 1)
	_, err := src.ListKeys(context.Background(), keysource.Request{
		Endpoint: srv.URL, ProjectID: kmstest.DefaultProjectID,
		Credentials: kms.Credentials{Token: "measure-token"}, PageSize: kms.MaxPageSize,
	})
	if err == nil {
		t.Fatalf("listing succeeded despite fault %s", fault.Kind)
	}
	return int(srv.Stats().Total)
}

func TestRetryDelayDoublesWithEqualJitterUpToTheInterval(t *testing.T) {
	base, interval := 5*time.Second, time.Minute
	for failures, want := range map[int][2]time.Duration{
		1: {2500 * time.Millisecond, 5 * time.Second}, 2: {5 * time.Second, 10 * time.Second},
		3: {10 * time.Second, 20 * time.Second}, 4: {20 * time.Second, 40 * time.Second},
		5: {40 * time.Second, time.Minute}, 6: {time.Minute, time.Minute}, 40: {time.Minute, time.Minute},
	} {
		lo, hi := retryDelay(failures, base, interval, 0, noJitter), retryDelay(failures, base, interval, 0, fullJitter)
		if lo != want[0] || hi != want[1] {
			t.Errorf("retryDelay(%d) spans [%v, %v], want [%v, %v]", failures, lo, hi, want[0], want[1])
		}
	}
	if d := retryDelay(1, base, interval, 30*time.Second, fullJitter); d != 30*time.Second {
		t.Errorf("Retry-After 30s gave %v, want it honoured", d)
	}
	if d := retryDelay(1, base, interval, time.Hour, noJitter); d != interval {
		t.Errorf("Retry-After 1h gave %v, want the interval %v", d, interval)
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

// failingListings is how many listings a selector starts in window while every one fails, when
// each retry waits delay(n) after failure n. Listing takes no time, which gives the most.
func failingListings(window time.Duration, delay func(n int) time.Duration) int {
	listings, elapsed := 1, time.Duration(0)
	for n := 1; ; n++ {
		if elapsed += delay(n); elapsed >= window {
			return listings
		}
		listings++
	}
}

// TestFailureCallCounts computes exactly, to the millisecond, the KMS calls a selector with a
// one-minute refresh interval makes while KMS fails for five minutes, with 403 (which the client
// does not retry) and with 503 (which it does), at the operator's defaults (backoff 5s, client
// MaxAttempts 4). A broken credential costs no more than a healthy selector plus the early
// backoff steps.
func TestFailureCallCounts(t *testing.T) {
	const window, interval, base = 5 * time.Minute, time.Minute, DefaultBackoff
	// Each retry waits its delay, and then up to a second more until the whole second that the
	// status stores; listing takes no time here, which gives the most listings.
	delay := func(jitter func(time.Duration) time.Duration, rounding time.Duration) func(int) time.Duration {
		return func(n int) time.Duration { return retryDelay(n, base, interval, 0, jitter) + rounding }
	}
	fewest, most := failingListings(window, delay(fullJitter, time.Second)), failingListings(window, delay(noJitter, 0))
	// Longest waits 6, 11, 21, 41, 61 … s: listings at 0, 6, 17, 38, 79, 140, 201, 262s.
	// Shortest waits 2.5, 5, 10, 20, 40, 60 … s: listings at 0, 2.5, 7.5, 17.5, 37.5, 77.5, 137.5,
	// 197.5, 257.5s.
	if fewest != 8 || most != 9 {
		t.Errorf("a failing selector lists %d to %d times in %v, want 8 to 9", fewest, most, window)
	}
	healthy := int(window / interval)
	for _, f := range []struct {
		name       string
		fault      kmstest.Fault
		firstCalls int
	}{
		{"403 KMS.0303", kmstest.Fault{Kind: kmstest.FaultKMSError, Code: "KMS.0303"}, 1},
		{"503", kmstest.Fault{Kind: kmstest.FaultServerError, Status: http.StatusServiceUnavailable}, kms.DefaultMaxAttempts},
	} {
		first := measureCallsPerListing(t, kms.DefaultMaxAttempts, f.fault)
		later := measureCallsPerListing(t, 1, f.fault)
		if first != f.firstCalls || later != 1 {
			t.Errorf("%s: the first listing made %d calls and a retry %d, want %d and 1", f.name, first, later, f.firstCalls)
		}
		lo, hi := first+(fewest-1)*later, first+(most-1)*later
		t.Logf("KMS answering %s for %v, refresh interval %v, backoff %v: %d to %d KMS calls (a healthy selector lists %d times)",
			f.name, window, interval, base, lo, hi, healthy)
		if f.firstCalls == 1 {
			if bound := healthy + EarlyBackoffSteps(base, interval); hi > bound {
				t.Errorf("%s: up to %d KMS calls, more than a healthy selector (%d) plus the early backoff steps", f.name, hi, bound)
			}
		}
	}
}
