package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// result is what one scenario measured.
type result struct {
	scenario      scenario
	err           error
	applyDuration time.Duration // creating the selectors
	readyAfter    time.Duration // from the start of the apply until the last selector was Ready
	// windowCalls are the KMS calls from the apply until every selector was Ready; of them,
	// firstSyncCalls were made for first syncs, the rest to refresh selectors already synced.
	windowCalls     int
	firstSyncCalls  int
	firstSyncWrites writeCounts
	firstSyncCPU    cpuTimes // CPU time of each process from the apply until all were Ready
	cpuMeter        cpuMeter
	cycle           cycle
	soak            *soakResult // keyless scenarios only
	memory          memory
	coalesced       float64
	naive           *naiveResult
}

func (r *result) complete() bool { return r.err == nil }

const mib = 1 << 20

// writeReport prints the markdown report: the results, the ratios against the naive baseline,
// the targets and the details behind the figures.
func writeReport(w io.Writer, o options, machine string, results []*result) {
	fmt.Fprintf(w, "## kms-key-sync benchmark\n\n%s\n\n", machine)
	env := ""
	if len(o.operatorEnv) > 0 {
		env = "; operator environment: " + strings.Join(o.operatorEnv, " ")
	}
	fmt.Fprintf(w, "Operator flags: --max-concurrent-reconciles=%d --kms-qps=%g --kms-burst=%d%s; selectors refresh every %s.\n\n",
		o.concurrency, o.kmsQPS, o.kmsBurst, env, refreshIntervals(results))
	writeResults(w, results)
	writeCPU(w, results)
	writeSoaks(w, results)
	writeBaseline(w, results)
	writeTargets(w, results)
	writeDetails(w, results)
}

// refreshIntervals says how often the scenarios' selectors refresh: "10s", or "10s; (e) 1m0s".
func refreshIntervals(results []*result) string {
	if len(results) == 0 {
		return ""
	}
	common := results[0].scenario.refresh
	var others []string
	for _, r := range results {
		if r.scenario.refresh != common {
			others = append(others, fmt.Sprintf("(%s) %s", r.scenario.name, r.scenario.refresh))
		}
	}
	return strings.Join(append([]string{common.String()}, others...), "; ")
}

func writeResults(w io.Writer, results []*result) {
	measured := func(r *result) bool { return !r.scenario.keyless }
	if !slices.ContainsFunc(results, measured) {
		return
	}
	fmt.Fprintln(w, "### Results")
	fmt.Fprintln(w)
	writeScenarioTable(w, results, measured,
		[]string{"Apply → all Ready", "KMS calls, first sync", "KMS calls / cycle", "ConfigMap writes / cycle", "Status writes / cycle", "All API writes / cycle", "Cycle took", "Peak RSS", "Peak heap in use"},
		func(r *result) []string {
			c := r.cycle
			return []string{seconds(r.readyAfter), num(r.firstSyncCalls), num(c.kmsCalls),
				num(c.operatorConfigMapWrites), num(c.writes.get(resStatus)), num(c.operatorWrites), seconds(c.duration),
				mebibytes(r.memory.peakRSS), mebibytes(r.memory.peakHeapInuse)}
		})
}

// writeCPU prints the CPU time each process of a scenario used in the measured cycle and in the
// first sync, so that the printed table shows which one would saturate the machine's cores first.
func writeCPU(w io.Writer, results []*result) {
	measured := func(r *result) bool { return !r.scenario.keyless && r.cpuMeter != nil }
	i := slices.IndexFunc(results, measured)
	if i < 0 {
		return
	}
	fmt.Fprintln(w, "### CPU")
	fmt.Fprintln(w)
	fmt.Fprintf(w, "CPU time (user and system, from /proc) each process used in the measured cycle, then in the first sync (apply → all Ready); the share is of %d cores over that window. The bench serves the KMS emulator.\n\n", runtime.NumCPU())
	var columns []string
	for _, p := range results[i].cpuMeter {
		columns = append(columns, p.name)
	}
	columns = append(columns, "All (share of the cores)", "Busiest")
	writeScenarioTable(w, results, measured, columns, func(r *result) []string {
		var cells []string
		for j := range r.cpuMeter {
			cells = append(cells, cpuSeconds(r.cycle.cpu[j])+" / "+cpuSeconds(r.firstSyncCPU[j]))
		}
		return append(cells,
			fmt.Sprintf("%s (%s) / %s (%s)", cpuSeconds(r.cycle.cpu.total()), cpuShare(r.cycle.cpu, r.cycle.duration),
				cpuSeconds(r.firstSyncCPU.total()), cpuShare(r.firstSyncCPU, r.readyAfter)),
			r.cycle.cpu.busiest(r.cpuMeter)+" / "+r.firstSyncCPU.busiest(r.cpuMeter))
	})
}

func cpuSeconds(d time.Duration) string {
	if d < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// cpuShare is the processes' CPU time as a share of every core over the window.
func cpuShare(c cpuTimes, window time.Duration) string {
	if window <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f%%", 100*c.total().Seconds()/(window.Seconds()*float64(runtime.NumCPU())))
}

// writeScenarioTable prints a markdown table with a row for each result that keep selects: its
// scenario, then its cells under columns (right-aligned), or the error of a failed run.
func writeScenarioTable(w io.Writer, results []*result, keep func(*result) bool, columns []string, cells func(*result) []string) {
	fmt.Fprintf(w, "| Scenario | %s |\n", strings.Join(columns, " | "))
	fmt.Fprintf(w, "|---|%s\n", strings.Repeat("---:|", len(columns)))
	for _, r := range results {
		if !keep(r) {
			continue
		}
		name := fmt.Sprintf("(%s) %s", r.scenario.name, r.scenario.title)
		if !r.complete() {
			fmt.Fprintf(w, "| %s | failed: %s |%s\n", name, oneLine(r.err), strings.Repeat("  |", len(columns)-1))
			continue
		}
		fmt.Fprintf(w, "| %s | %s |\n", name, strings.Join(cells(r), " | "))
	}
	fmt.Fprintln(w)
}

func writeBaseline(w io.Writer, results []*result) {
	var rows []string
	for _, r := range results {
		if !r.complete() || r.naive == nil {
			continue
		}
		c, n := r.cycle, r.naive
		rows = append(rows, fmt.Sprintf("| (%s) | %s | %s | %s | %s |", r.scenario.name,
			versus(c.kmsCalls, int(n.kmsCalls)),
			versus(c.operatorConfigMapWrites, n.writes.get(resConfigMaps)),
			versus(c.operatorWrites, n.writes.total()),
			seconds(n.duration)))
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w, "### Against the naive baseline, per refresh cycle (ours vs naive)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "The naive baseline is what a hand-written CronJob does: page size 10, no coalescing, and a")
	fmt.Fprintln(w, "ConfigMap Create/Update for every selector on every run, changed or not.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Our API writes are every write request the operator sent, whatever the resource (status, ConfigMaps,")
	fmt.Fprintln(w, "events and any other object); the baseline's are every write the API server counted during its run.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Scenario | KMS calls | ConfigMap writes | All API writes | Naive run took |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|")
	for _, row := range rows {
		fmt.Fprintln(w, row)
	}
	fmt.Fprintln(w)
}

func writeTargets(w io.Writer, results []*result) {
	ts := targets(results)
	if len(ts) == 0 {
		return
	}
	fmt.Fprintln(w, "### Targets")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Scenario | Target | Measured | Met |")
	fmt.Fprintln(w, "|---|---|---:|---|")
	for _, t := range ts {
		met := "yes"
		if !t.met {
			met = "**no**"
		}
		fmt.Fprintf(w, "| (%s) | %s | %s | %s |\n", t.scenario, t.goal, t.measured, met)
	}
	fmt.Fprintln(w)
}

func writeDetails(w io.Writer, results []*result) {
	fmt.Fprintln(w, "### Details")
	fmt.Fprintln(w)
	for _, r := range results {
		if !r.complete() {
			fmt.Fprintf(w, "- (%s) failed: %s\n", r.scenario.name, oneLine(r.err))
			continue
		}
		c := r.cycle
		fmt.Fprintf(w, "- (%s) creating the selectors took %s. First sync API writes: %s. KMS calls until all were Ready: %s; %s of them for first syncs (the operator's listings for anything but a refresh, at %s a listing), the others to refresh selectors already synced.\n",
			r.scenario.name, seconds(r.applyDuration), r.firstSyncWrites, num(r.windowCalls), num(r.firstSyncCalls),
			callsOf(pagesPerListing(r.scenario)))
		if s := r.soak; s != nil {
			fmt.Fprintf(w, "  Soak: %s samples, one every %s; at worst %s selectors not Synced in one sample. Peak RSS %s.\n",
				num(s.samples), soakSampleInterval, num(s.worstSample), mebibytes(r.memory.peakRSS))
			continue
		}
		fmt.Fprintf(w, "  Steady cycle: %s from the last selector's first refresh to its second (the interval is the cycle's ideal length), at most %s between one selector's two; %s KMS calls in that window; API writes the API server counted: %s; write requests the operator sent: %s; the operator's own ConfigMap write counter: %s.\n",
			seconds(c.duration), seconds(c.longestGap), num(int(c.kmsTotal)), c.writes, num(c.operatorWrites), num(c.operatorConfigMapWrites))
		m := r.memory
		fmt.Fprintf(w, "  Listings answered by coalescing since start: %s. Heap: peak allocated %s, %s at the end (%d samples). RSS at the end: %s anonymous + %s file-backed (the binary).\n",
			num(int(r.coalesced)), mebibytes(m.peakHeapAlloc), mebibytes(m.lastHeapAlloc), m.samples, mebibytes(m.rssAnon), mebibytes(m.rssFile))
		if n := r.naive; n != nil {
			fmt.Fprintf(w, "  Naive run: %s, %s KMS calls, API writes: %s.\n", seconds(n.duration), num(int(n.kmsCalls)), n.writes)
		}
	}
	fmt.Fprintln(w)
}

// machineInfo describes where the bench ran.
func machineInfo() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	memTotal := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0]); len(f) >= 2 {
			if kb, err := strconv.ParseUint(f[1], 10, 64); err == nil {
				memTotal = fmt.Sprintf(", %.1f GiB RAM", float64(kb)/(1<<20))
			}
		}
	}
	kernel := ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = ", Linux " + strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("Machine: %d × %s%s%s, %s; run %s.", runtime.NumCPU(), cpu, memTotal, kernel,
		runtime.Version(), time.Now().UTC().Format("2006-01-02 15:04 MST"))
}

// num formats n with thousands separators.
func num(n int) string {
	s := strconv.Itoa(max(n, -n))
	var b strings.Builder
	if n < 0 {
		b.WriteByte('-')
	}
	for i, d := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(d)
	}
	return b.String()
}

// count formats "1 filter", "2 filters".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return num(n) + " " + noun + "s"
}

// versus formats "ours vs naive (ratio×)".
func versus(ours, naive int) string {
	if naive == 0 {
		return fmt.Sprintf("%s vs 0", num(ours))
	}
	return fmt.Sprintf("%s vs %s (%s×)", num(ours), num(naive), ratio(float64(ours)/float64(naive)))
}

func ratio(r float64) string {
	switch {
	case r == 0:
		return "0"
	case r >= 0.1:
		return strconv.FormatFloat(r, 'f', 2, 64)
	default:
		return strconv.FormatFloat(r, 'g', 2, 64)
	}
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

func mebibytes(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/mib) }

func oneLine(err error) string {
	return strings.ReplaceAll(strings.ReplaceAll(err.Error(), "\n", "; "), "|", "/")
}

func callsOf(n int) string {
	if n == 1 {
		return "1 call"
	}
	return num(n) + " calls"
}
