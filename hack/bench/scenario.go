package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// scenario is one shape of load.
type scenario struct {
	name, title string
	// selectors are spread round-robin over namespaces; selector i asks for filter i % filters.
	selectors, namespaces, filters int
	// keysPerFilter keys in the emulator match each filter (they carry tag app=app-NNNN).
	keysPerFilter int
	// clutter unrelated ConfigMaps and as many unrelated Secrets exist before the operator starts.
	clutter int
	// baseline says whether the naive baseline runs for this scenario.
	baseline bool
	// keyless selectors act as a service account of their namespace through the IAM emulator
	// (workload identity) instead of a credentials Secret, and are watched for --soak-duration
	// instead of measured over one refresh cycle.
	keyless bool
	// refresh is the selectors' spec.refreshInterval; zero means defaultRefresh. A
	// --refresh-interval on the command line overrides it.
	refresh time.Duration
	// readyTimeout is how long the selectors may take to become Ready; zero means
	// defaultReadyTimeout. A --ready-timeout on the command line overrides it.
	readyTimeout time.Duration
}

const (
	// defaultRefresh is the refresh interval of a scenario that names none: the minimum.
	defaultRefresh = 10 * time.Second
	// defaultReadyTimeout is how long a scenario's selectors may take to become Ready, unless it
	// says otherwise.
	defaultReadyTimeout = 3 * time.Minute
)

// defaultScenarios run when --scenarios is not given. (e) is left out: 10,000 creates and three
// one-minute refresh cycles take well over 5 minutes on 2 cores.
const defaultScenarios = "a,b,c,d,k"

var scenarios = []scenario{
	{name: "a", title: "1 selector × 10,000 keys", selectors: 1, namespaces: 1, filters: 1, keysPerFilter: 10000, baseline: true},
	{name: "b", title: "1,000 selectors × 100 keys, each its own filter, 10 namespaces", selectors: 1000, namespaces: 10, filters: 1000, keysPerFilter: 100, baseline: true},
	{name: "c", title: "1,000 selectors sharing 10 filters (100 keys each), 10 namespaces", selectors: 1000, namespaces: 10, filters: 10, keysPerFilter: 100, baseline: true},
	{name: "d", title: "scenario b with 5,000 unrelated ConfigMaps and 5,000 Secrets", selectors: 1000, namespaces: 10, filters: 1000, keysPerFilter: 100, clutter: 5000},
	{name: "e", title: "10,000 selectors in 100 namespaces sharing 1,000 filters (10 keys each, so that KMS is not the bottleneck), refreshed every minute", selectors: 10000, namespaces: 100, filters: 1000, keysPerFilter: 10, refresh: time.Minute, readyTimeout: 10 * time.Minute},
	{name: "k", title: "100 keyless selectors × 10 keys, each its own filter, one service account, 2-minute credentials", selectors: 100, namespaces: 1, filters: 100, keysPerFilter: 10, keyless: true},
}

func scenarioByName(name string) (scenario, bool) {
	for _, s := range scenarios {
		if s.name == name {
			return s, true
		}
	}
	return scenario{}, false
}

// resolve returns the scenario as it runs: with its refresh interval and ready timeout (the
// command line's, when given, override the scenario's) and shrunk by o.scale. Scaling multiplies
// the selectors, the filters and the unrelated objects, rounding up; namespaces and keys per
// filter stay, so that a small run keeps the scenario's shape. Its title says so.
func (s scenario) resolve(o options) scenario {
	s.refresh = cmp.Or(o.refresh, s.refresh, defaultRefresh)
	s.readyTimeout = cmp.Or(o.readyTimeout, s.readyTimeout, defaultReadyTimeout)
	if o.scale == 1 {
		return s
	}
	shrink := func(n int) int { return int(math.Ceil(float64(n) * o.scale)) }
	s.selectors, s.filters, s.clutter = shrink(s.selectors), shrink(s.filters), shrink(s.clutter)
	s.namespaces = min(s.namespaces, s.selectors)
	s.title += fmt.Sprintf(" — scaled ×%g: %s, %s", o.scale, count(s.selectors, "selector"), count(s.filters, "filter"))
	if s.clutter > 0 {
		s.title += fmt.Sprintf(", %s unrelated objects of each kind", num(s.clutter))
	}
	return s
}

func scenarioNames() string {
	names := make([]string, len(scenarios))
	for i, s := range scenarios {
		names[i] = s.name
	}
	return strings.Join(names, ",")
}

const (
	// refreshSamples is how many times per refresh interval the tracker samples the operator's
	// last-sync gauge: often enough to date a refresh within 5% of the interval, seldom enough
	// that 10,000 series cost the operator little.
	refreshSamples = 20

	benchToken  = "kms-key-sync-bench-token"
	tagKey      = "app"
	stepTimeout = 2 * time.Minute
)

func namespaceName(i int) string { return fmt.Sprintf("bench-%02d", i) }

func (s scenario) namespaceNames() []string {
	out := make([]string, s.namespaces)
	for i := range out {
		out[i] = namespaceName(i)
	}
	return out
}

func filterValue(i int) string { return fmt.Sprintf("app-%04d", i) }

// selectorRef is one selector of a scenario: where it lives and what it asks for.
type selectorRef struct {
	key    types.NamespacedName
	filter kms.Filter
}

func (s scenario) selectorRefs() []selectorRef {
	out := make([]selectorRef, s.selectors)
	for i := range out {
		out[i] = selectorRef{
			key:    types.NamespacedName{Namespace: namespaceName(i % s.namespaces), Name: fmt.Sprintf("sel-%04d", i)},
			filter: kms.Filter{Tags: []kms.TagFilter{{Key: tagKey, Values: []string{filterValue(i % s.filters)}}}},
		}
	}
	return out
}

// filterKey names a filter the same way for a selector's spec and for a request the emulator got.
func filterKey(tags []kms.TagFilter) string {
	parts := make([]string, 0, len(tags))
	for _, t := range tags {
		parts = append(parts, t.Key+"="+strings.Join(t.Values, "|"))
	}
	return strings.Join(parts, ",")
}

// runScenario runs one scenario from a fresh control plane to the baseline, and always stops
// what it started.
func runScenario(ctx context.Context, o options, sc scenario) (res *result, err error) {
	res = &result{scenario: sc}
	var stack cleanupStack
	defer func() { err = errors.Join(err, stack.run()) }()

	cl, err := startCluster(o.root)
	if err != nil {
		return res, err
	}
	stack.push("control plane", cl.stop)
	emu, err := startEmulator(sc)
	if err != nil {
		return res, err
	}
	stack.push("KMS emulator", emu.close)
	var iam *iamServer
	if sc.keyless {
		if iam, err = startIAM(ctx, cl, sc, emu); err != nil {
			return res, err
		}
		stack.push("IAM emulator", iam.close)
	}
	if err := seed(ctx, cl, sc); err != nil {
		return res, err
	}
	tr, err := startTracker(ctx, cl.env.Config, sc)
	if err != nil {
		return res, err
	}
	stack.push("selector watch", tr.stop)

	var extraArgs []string
	if iam != nil {
		extraArgs = iam.operatorArgs()
	}
	op, err := startOperator(o, sc, cl, extraArgs...)
	if err != nil {
		return res, err
	}
	stack.push("operator", op.stop)
	tr.followRefreshes(op, sc.refresh/refreshSamples)
	if err := measureOperator(ctx, o, sc, cl, emu, iam, tr, op, res); err != nil {
		return res, err
	}
	if err := stack.runOne("operator"); err != nil {
		return res, err
	}
	if o.baseline && sc.baseline {
		progress("running the naive baseline (page size 10, no coalescing, a write per selector)")
		naive, err := runNaive(ctx, cl, emu, sc, o.naiveWorkers)
		if err != nil {
			return res, fmt.Errorf("naive baseline: %w", err)
		}
		res.naive = &naive
	}
	return res, nil
}

// measureOperator applies the selectors, waits for them to become Ready, measures one
// steady-state cycle (or, for a keyless scenario, soaks) and reads the operator's memory.
func measureOperator(ctx context.Context, o options, sc scenario, cl *cluster, emu *emulator, iam *iamServer, tr *tracker, op *operatorProc, res *result) error {
	if err := op.waitReady(ctx, stepTimeout); err != nil {
		return err
	}
	// Every wait below ends at once, with the reason, should the operator exit.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-op.exited:
			cancel(fmt.Errorf("the operator exited: %v (see %s)", op.exitErr, op.log.Name()))
		case <-ctx.Done():
		}
	}()
	res.cpuMeter = newCPUMeter(op)
	sampler := op.sampleMemory(ctx, 2*time.Second)
	defer sampler.stop()
	prof := newProfiler(o, sc, cl, op)

	if err := measureFirstSync(ctx, o, sc, cl, emu, iam, tr, op, prof, res); err != nil {
		return err
	}
	if err := prof.steady(ctx); err != nil {
		return err
	}
	var err error
	if sc.keyless {
		res.soak, err = soak(ctx, o, emu, iam, tr)
	} else {
		res.cycle, err = measureCycle(ctx, sc, cl, emu, tr, op, res.cpuMeter)
	}
	if err != nil {
		return err
	}
	if err := prof.finish(ctx); err != nil {
		return err
	}
	res.memory = sampler.stop()
	if res.memory.peakRSS, err = op.peakRSS(); err != nil {
		return err
	}
	res.memory.rssAnon, _ = procStatus(op.cmd.Process.Pid, "RssAnon")
	res.memory.rssFile, _ = procStatus(op.cmd.Process.Pid, "RssFile")
	res.coalesced, _ = op.counter(ctx, "kms_key_sync_coalesced_requests_total")
	return nil
}

// measureFirstSync applies the selectors and waits until every one is Ready.
func measureFirstSync(ctx context.Context, o options, sc scenario, cl *cluster, emu *emulator, iam *iamServer, tr *tracker, op *operatorProc, prof *profiler, res *result) error {
	emu.ResetStats()
	before, err := cl.apiWrites(ctx)
	if err != nil {
		return err
	}
	cpuBefore := res.cpuMeter.read()
	progress("applying %d selectors", sc.selectors)
	applied := time.Now()
	prof.firstSync(ctx)
	var auth []func(*kmsv1alpha1.KmsKeySelector)
	if iam != nil {
		auth = append(auth, iam.selectorAuth())
	}
	if err := createSelectors(ctx, cl, sc, emu.URL, auth...); err != nil {
		return err
	}
	res.applyDuration = time.Since(applied)
	ready, err := tr.waitFor(ctx, sc.readyTimeout, "Ready", firstReady)
	if err != nil {
		return err
	}
	res.readyAfter = ready.Sub(applied)
	res.firstSyncCPU = res.cpuMeter.read().sub(cpuBefore)
	res.windowCalls = emu.callsUntil(ready)
	listings, err := op.listings(ctx)
	if err != nil {
		return err
	}
	// Read after the last was Ready: a refresh may have listed since, but no first sync.
	res.firstSyncCalls = (listings.total - listings.refreshes) * pagesPerListing(sc)
	after, err := cl.apiWrites(ctx)
	if err != nil {
		return err
	}
	res.firstSyncWrites = after.sub(before)
	delete(res.firstSyncWrites, "kmskeyselectors") // the bench's own creates; the operator writes only status
	progress("all %d selectors Ready %s after the apply began; %d KMS calls, %d of them for first syncs", sc.selectors,
		res.readyAfter.Round(100*time.Millisecond), res.windowCalls, res.firstSyncCalls)
	return nil
}

// cleanupStack stops what was started, last started first.
type cleanupStack struct {
	names []string
	fns   []func() error
}

func (s *cleanupStack) push(name string, fn func() error) {
	s.names = append(s.names, name)
	s.fns = append(s.fns, fn)
}

// runOne stops one thing early and forgets it.
func (s *cleanupStack) runOne(name string) error {
	for i, n := range s.names {
		if n == name {
			fn := s.fns[i]
			s.names = append(s.names[:i], s.names[i+1:]...)
			s.fns = append(s.fns[:i], s.fns[i+1:]...)
			return wrapStop(name, fn())
		}
	}
	return nil
}

func (s *cleanupStack) run() error {
	var errs []error
	for i := len(s.fns) - 1; i >= 0; i-- {
		errs = append(errs, wrapStop(s.names[i], s.fns[i]()))
	}
	s.names, s.fns = nil, nil
	return errors.Join(errs...)
}

func wrapStop(name string, err error) error {
	if err != nil {
		return fmt.Errorf("stopping the %s: %w", name, err)
	}
	return nil
}

// pagesPerListing is how many calls one listing of a filter takes, at the default page size.
func pagesPerListing(sc scenario) int {
	return max(1, (sc.keysPerFilter+kms.MaxPageSize-1)/kms.MaxPageSize)
}
