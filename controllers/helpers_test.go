package controllers_test

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// specT is what a spec's body needs from Ginkgo: a Gomega to fail through, report entries, and
// cleanups that run when the spec ends. running is the spec Ginkgo is running; a row of
// describeConcurrently is another.
type specT interface {
	Gomega
	Report(name, value string)
	Cleanup(fn func())
}

type runningSpec struct{ Gomega }

func (runningSpec) Report(name, value string) { AddReportEntry(name, value) }
func (runningSpec) Cleanup(fn func())         { DeferCleanup(fn) }

var running specT = runningSpec{Default}

// newFixture returns a fixture of the suite's API server whose emulator stops when the spec ends.
func newFixture(opts ...kmstest.Option) *testkit.Fixture {
	GinkgoHelper()
	return fixtureFor(running, opts...)
}

func fixtureFor(s specT, opts ...kmstest.Option) *testkit.Fixture {
	f := testkit.NewFixture(s, k8sClient, "test", opts...)
	s.Cleanup(f.Close)
	return f
}

// deleteSelectorAtCleanup deletes the selector when the spec ends, so that it stops calling KMS.
func deleteSelectorAtCleanup(sel *kmsv1alpha1.KmsKeySelector) { deleteAtCleanup(running, sel) }

func deleteAtCleanup(s specT, sel *kmsv1alpha1.KmsKeySelector) {
	s.Cleanup(func() {
		s.Expect(client.IgnoreNotFound(k8sClient.Delete(ctx(), sel))).To(Succeed())
	})
}

func ctx() context.Context { return context.Background() }

// The specs prove that something did not happen by reading, after a barrier, what it would have
// changed. A barrier is a later event for the same selector that the operator must have processed
// after the one under test: it handles one selector in one reconcile at a time, and records an
// attempt in the status only once the attempt is over.

// failures returns a function that reads the selector's status.consecutiveFailures.
func failures(f *testkit.Fixture, sel *kmsv1alpha1.KmsKeySelector) func(Gomega) int32 {
	return func(g Gomega) int32 { return f.Get(sel)(g).Status.ConsecutiveFailures }
}

// awaitFailures waits until the status records at least n failed attempts in a row.
func awaitFailures(g Gomega, f *testkit.Fixture, sel *kmsv1alpha1.KmsKeySelector, n int32) {
	GinkgoHelper()
	g.Eventually(failures(f, sel)).Should(BeNumerically(">=", n), "status.consecutiveFailures of %s", sel.Name)
}

// settle force-syncs the selector and waits until the operator has answered. Every reconcile
// that read the selector as it was before is over by then, so nothing that happened before the
// call lists KMS after it: counts can start from rest.
func settle(g Gomega, f *testkit.Fixture, sel *kmsv1alpha1.KmsKeySelector) {
	GinkgoHelper()
	f.ForceSync(sel)
	g.Eventually(f.Handled(sel)).Should(Succeed())
}

// awaitRetry waits until the status records one more failed attempt than it does now: a backoff
// retry that ended after the call.
func awaitRetry(g Gomega, f *testkit.Fixture, sel *kmsv1alpha1.KmsKeySelector) {
	GinkgoHelper()
	awaitFailures(g, f, sel, failures(f, sel)(g)+1)
}

// refreshListing makes the operator run the scheduled refreshes of sels now, and waits first until
// the operator's coalescing window has passed since the emulator's last request, so that the
// refresh lists KMS anew.
func refreshListing(f *testkit.Fixture, sels ...*kmsv1alpha1.KmsKeySelector) {
	GinkgoHelper()
	if records := f.KMS.Requests(); len(records) > 0 {
		// The operator keeps a listing from when it has read the last answer, a little after the
		// emulator received the last request.
		time.Sleep(time.Until(records[len(records)-1].Time.Add(coalesceWindow + 50*time.Millisecond)))
	}
	f.RefreshNow(sels...)
}

// readySeries returns the selector's series of kms_key_sync_selector_ready, which the operator
// keeps while it knows the selector.
func readySeries(g Gomega, sel *kmsv1alpha1.KmsKeySelector) []testkit.Series {
	return scrapeFamily(g, "kms_key_sync_selector_ready").
		Series("kms_key_sync_selector_ready", map[string]string{"namespace": sel.Namespace, "selector": sel.Name})
}

// awaitForgotten waits until the operator has processed the selector's deletion, which drops
// the selector's series of kms_key_sync_selector_ready.
func awaitForgotten(sel *kmsv1alpha1.KmsKeySelector) {
	GinkgoHelper()
	Eventually(func(g Gomega) []testkit.Series { return readySeries(g, sel) }).
		Should(BeEmpty(), "the operator still reports selector %s/%s", sel.Namespace, sel.Name)
}

// awaitIdleWorkers waits until no reconcile is running: every reconcile that was running at the
// call has ended.
func awaitIdleWorkers() {
	GinkgoHelper()
	Eventually(func(g Gomega) float64 {
		series := scrapeFamily(g, "controller_runtime_active_workers").
			Series("controller_runtime_active_workers", map[string]string{"controller": "kmskeyselector"})
		g.Expect(series).To(HaveLen(1))
		return series[0].Value
	}).WithPolling(10*time.Millisecond).Should(BeZero(), "reconciles still running")
}

// scrapeFamily reads one metric family from the operator's metrics endpoint.
func scrapeFamily(g Gomega, family string) testkit.Metrics {
	m, err := testkit.ScrapeMetrics(ctx(), nil, metricsURL, family)
	g.Expect(err).NotTo(HaveOccurred())
	return m
}

// concurrentEntry is one row of describeConcurrently.
type concurrentEntry[R any] struct {
	name string
	row  R
	at   types.CodeLocation
}

func concurrently[R any](name string, row R) concurrentEntry[R] {
	return concurrentEntry[R]{name: name, row: row, at: types.NewCodeLocation(1)}
}

// describeConcurrently declares a container with one spec per entry, like DescribeTable, but
// starts every entry's body at once, each in a goroutine of its own, before the first of these
// specs runs; each spec then waits for its body and reports how it went. The bodies spend their
// time waiting for the operator's backoff, which they can do side by side. A body fails through
// the specT it is given, and calls nothing else of Ginkgo's.
func describeConcurrently[R any](text string, body func(s specT, row R), entries ...concurrentEntry[R]) bool {
	return Describe(text, Ordered, ContinueOnFailure, func() {
		rows := make([]*rowRun, len(entries))
		BeforeAll(func() {
			for i, e := range entries {
				rows[i] = startRow(func(s specT) { body(s, e.row) })
			}
			DeferCleanup(func() {
				for _, r := range rows {
					<-r.done
					r.cleanUp()
				}
			})
		})
		for i, e := range entries {
			It(e.name, e.at, func() {
				Eventually(rows[i].done).WithTimeout(5 * time.Minute).Should(BeClosed())
				rows[i].report()
			})
		}
	})
}

// rowRun is one running body of describeConcurrently: a specT that keeps the body's first failure,
// its report entries and its cleanups until its spec runs.
type rowRun struct {
	Gomega
	done chan struct{}

	mu       sync.Mutex
	failure  string
	entries  [][2]string
	cleanups []func()
}

// errRowFailed unwinds a body at its first failure.
var errRowFailed = errors.New("row failed")

func startRow(body func(specT)) *rowRun {
	r := &rowRun{done: make(chan struct{})}
	g := NewGomega(func(message string, callerSkip ...int) {
		skip := 0
		if len(callerSkip) > 0 {
			skip = callerSkip[0]
		}
		r.fail(message, types.NewCodeLocationWithStackTrace(skip+1))
		panic(errRowFailed)
	})
	g.SetDefaultEventuallyTimeout(eventuallyTimeout)
	g.SetDefaultEventuallyPollingInterval(eventuallyPolling)
	r.Gomega = g
	go func() {
		defer close(r.done)
		defer func() {
			if p := recover(); p != nil && p != errRowFailed {
				r.fail(fmt.Sprintf("panic: %v", p), types.CodeLocation{FullStackTrace: string(debug.Stack())})
			}
		}()
		body(r)
	}()
	return r
}

func (r *rowRun) fail(message string, at types.CodeLocation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failure != "" {
		return
	}
	r.failure = message + "\n"
	if at.FileName != "" {
		r.failure += "\nat " + at.String()
	}
	r.failure += "\n" + strings.TrimSpace(at.FullStackTrace)
}

func (r *rowRun) Report(name, value string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = append(r.entries, [2]string{name, value})
}

func (r *rowRun) Cleanup(fn func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, fn)
}

// report replays the body's outcome in the running spec.
func (r *rowRun) report() {
	GinkgoHelper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.entries {
		AddReportEntry(e[0], e[1])
	}
	if r.failure != "" {
		Fail(r.failure)
	}
}

// cleanUp runs the body's cleanups, the last registered first; they fail the running node.
func (r *rowRun) cleanUp() {
	r.mu.Lock()
	cleanups := slices.Clone(r.cleanups)
	r.mu.Unlock()
	r.Gomega = Default
	for _, fn := range slices.Backward(cleanups) {
		fn()
	}
}
