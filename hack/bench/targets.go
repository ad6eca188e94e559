package main

import (
	"fmt"
	"strconv"
	"time"
)

// goal is one performance target of a scenario: what is measured and its limit. The limits that
// depend on the scenario's size (a share of its selectors or filters) shrink with --scale.
type goal struct {
	scenario string
	what     string
	limit    func(scenario) limit
	// measure returns the figure from the scenario's result, and false when this run did not
	// measure it (no baseline, say). all holds every scenario's complete result, by name.
	measure func(r *result, all map[string]*result) (float64, bool)
}

// goals are the targets of docs/benchmarks.md, each with its threshold. The keyless soak's,
// which scale with --soak-duration, are soakResult.targets.
var goals = []goal{
	{"a", "first sync", fixed(under(5 * time.Second)), of(readyAfter)},
	{"a", "KMS calls, first sync", fixed(atMost(10)), of(firstSyncCalls)},

	{"b", "all Ready", fixed(under(30 * time.Second)), of(readyAfter)},
	{"b", "cycle keeps the interval", cycleWithin(1.1), of(cycleLength)},
	{"b", "status writes per cycle", shareOfSelectors(0.1), of(statusWrites)},
	{"b", "KMS calls per cycle", perSelector, of(cycleCalls)},
	{"b", "ConfigMap writes per cycle", fixed(atMost(0)), of(configMapWrites)},
	{"b", "all API writes per cycle against the naive baseline", fixed(ratioAtMost(0.1)), writesAgainstNaive},

	{"c", "all Ready", fixed(under(30 * time.Second)), of(readyAfter)},
	{"c", "cycle keeps the interval", cycleWithin(1.1), of(cycleLength)},
	{"c", "status writes per cycle", shareOfSelectors(0.1), of(statusWrites)},
	{"c", "KMS calls per cycle", perFilter, of(cycleCalls)},
	{"c", "KMS calls, first sync", perFilter, of(firstSyncCalls)},
	{"c", "all API writes per cycle against the naive baseline", fixed(ratioAtMost(0.1)), writesAgainstNaive},

	{"d", "peak RSS", fixed(mebibytesUnder(150)), of(peakRSS)},
	{"d", "peak RSS above (b)'s", fixed(percentAtMost(10)), rssAboveB},
}

// A limit is a threshold: a figure meets it when it is below max, or at most max if inclusive.
type limit struct {
	max       float64
	inclusive bool
	format    func(float64) string
}

func (l limit) met(v float64) bool {
	if l.inclusive {
		return v <= l.max
	}
	return v < l.max
}

func (l limit) String() string {
	op := "<"
	switch {
	case l.inclusive && l.max == 0:
		op = "="
	case l.inclusive:
		op = "≤"
	}
	return op + " " + l.format(l.max)
}

func atMost(n int) limit { return limit{float64(n), true, formatCount} }

func under(d time.Duration) limit { return limit{d.Seconds(), false, formatSeconds} }

func ratioAtMost(r float64) limit {
	return limit{r, true, func(v float64) string { return ratio(v) + "×" }}
}

func mebibytesUnder(n float64) limit {
	return limit{n, false, func(v float64) string { return fmt.Sprintf("%.0f MiB", v) }}
}

func percentAtMost(p float64) limit {
	return limit{p, true, func(v float64) string { return fmt.Sprintf("%+.1f%%", v) }}
}

func formatCount(v float64) string   { return num(int(v)) }
func formatSeconds(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) + " s" }

// Limits from the scenario.

func fixed(l limit) func(scenario) limit { return func(scenario) limit { return l } }

// cycleWithin allows a steady cycle factor times the refresh interval.
func cycleWithin(factor float64) func(scenario) limit {
	return func(sc scenario) limit { return limit{factor * sc.refresh.Seconds(), true, formatSeconds} }
}

// shareOfSelectors allows a count of share times the selectors: 100 of 1,000.
func shareOfSelectors(share float64) func(scenario) limit {
	return func(sc scenario) limit { return atMost(int(share * float64(sc.selectors))) }
}

func perSelector(sc scenario) limit { return atMost(sc.selectors) }

func perFilter(sc scenario) limit { return atMost(sc.filters) }

// Figures from a result.

func of(f func(*result) float64) func(*result, map[string]*result) (float64, bool) {
	return func(r *result, _ map[string]*result) (float64, bool) { return f(r), true }
}

func readyAfter(r *result) float64      { return r.readyAfter.Seconds() }
func firstSyncCalls(r *result) float64  { return float64(r.firstSyncCalls) }
func cycleLength(r *result) float64     { return r.cycle.duration.Seconds() }
func cycleCalls(r *result) float64      { return float64(r.cycle.kmsCalls) }
func statusWrites(r *result) float64    { return float64(r.cycle.writes.get(resStatus)) }
func configMapWrites(r *result) float64 { return float64(r.cycle.operatorConfigMapWrites) }
func peakRSS(r *result) float64         { return float64(r.memory.peakRSS) / mib }

func writesAgainstNaive(r *result, _ map[string]*result) (float64, bool) {
	if r.naive == nil || r.naive.writes.total() == 0 {
		return 0, false
	}
	return float64(r.cycle.operatorWrites) / float64(r.naive.writes.total()), true
}

func rssAboveB(r *result, all map[string]*result) (float64, bool) {
	b := all["b"]
	if b == nil || b.memory.peakRSS == 0 {
		return 0, false
	}
	return 100 * (float64(r.memory.peakRSS)/float64(b.memory.peakRSS) - 1), true
}

// target is a goal as this run measured it.
type target struct {
	scenario, goal, measured string
	met                      bool
}

func targets(results []*result) []target {
	all := map[string]*result{}
	var order []*result
	for _, r := range results {
		if r.complete() {
			all[r.scenario.name] = r
			order = append(order, r)
		}
	}
	var out []target
	for _, r := range order {
		for _, g := range goals {
			if g.scenario != r.scenario.name {
				continue
			}
			l := g.limit(r.scenario)
			v, ok := g.measure(r, all)
			if !ok {
				out = append(out, target{r.scenario.name, g.what + " " + l.String(), "not measured", false})
				continue
			}
			out = append(out, target{r.scenario.name, g.what + " " + l.String(), l.format(v), l.met(v)})
		}
		if r.soak != nil {
			r.soak.targets(func(what, measured string, met bool) {
				out = append(out, target{r.scenario.name, what, measured, met})
			})
		}
	}
	return out
}
