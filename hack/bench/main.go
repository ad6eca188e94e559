// Command bench measures kms-key-sync at scale. For each scenario it starts a fresh control plane
// (envtest's etcd and kube-apiserver), a KMS emulator over TLS in this process and the real
// operator binary as a separate process, authenticated as a user of its own bound to the generated
// RBAC. It applies the scenario's selectors and reports how long they take to become Ready, how
// many KMS calls, API writes and CPU seconds (of the operator, kube-apiserver, etcd and the bench
// itself) the first sync and one steady-state refresh cycle cost, and the operator's peak RSS and
// heap. A refresh shows in the operator's last-sync gauge, which the bench samples. It then runs a naive baseline (what a hand-written CronJob does:
// page size 10, no coalescing, a write on every refresh) against the same data and prints our
// figures as ratios against it. The keyless scenario (k) instead has its selectors act as a
// service account through the IAM emulator, on 2-minute credentials, and watches them for
// --soak-duration of wall clock: it counts id-token exchanges, IAM refusals, KMS 403s and the
// samples in which a selector was not Synced. The result is a markdown report on stdout;
// progress goes to stderr.
//
//	make bench                               # every scenario
//	make bench BENCH_ARGS='--scenarios=b'    # one scenario
//	make bench BENCH_ARGS='--scenarios=k'    # the keyless soak alone
//	make bench BENCH_ARGS='--scenarios=e'    # 10,000 selectors, not in the default list
//	bin/bench --scenarios=b,c,e --scale=0.05 # a quick check of the harness on small scenarios
//
// See docs/benchmarks.md for the scenarios, the targets and the last results.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap/zapcore"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// options are the command line.
type options struct {
	root         string        // the repository root: config/crd/bases lives there
	manager      string        // the operator binary
	outDir       string        // logs and profiles
	scenarios    []scenario    // the scenarios to run, in order, resolved against refresh and scale
	refresh      time.Duration // overrides every scenario's refresh interval when not zero
	scale        float64
	concurrency  int     // the operator's --max-concurrent-reconciles
	kmsQPS       float64 // the operator's --kms-qps
	kmsBurst     int     // the operator's --kms-burst
	baseline     bool
	naiveWorkers int
	profile      string        // the scenario to profile with pprof; "" for none
	cpuProfile   time.Duration // length of the CPU profile, started when the selectors are applied
	readyTimeout time.Duration // overrides every scenario's when not zero
	soakDuration time.Duration // how long keyless scenarios are watched once every selector is Synced
	operatorEnv  []string      // extra NAME=value environment of the operator, such as GOMEMLIMIT=120MiB
	verbose      bool
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	o := options{}
	var scenarios string
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.root, "root", ".", "the repository root (holds config/crd/bases)")
	fs.StringVar(&o.manager, "manager", filepath.Join("bin", "manager"), "the operator binary to run (make bench builds it)")
	fs.StringVar(&o.outDir, "out", filepath.Join("bin", "bench-out"), "where operator logs and pprof profiles go")
	fs.StringVar(&scenarios, "scenarios", defaultScenarios, "comma-separated scenarios to run, of "+scenarioNames()+
		"; (e), 10,000 selectors refreshed every minute, is not in the default list: it runs for well over 5 minutes on 2 cores")
	fs.DurationVar(&o.refresh, "refresh-interval", 0, "the selectors' spec.refreshInterval in every scenario (10s is the minimum); by default each scenario's own: 10s, and 1m for (e)")
	fs.Float64Var(&o.scale, "scale", 1, "shrink the scenarios for a quick check of the harness: multiplies the selectors, filters and unrelated objects (rounding up), and the targets that depend on them; in (0, 1]")
	fs.IntVar(&o.concurrency, "max-concurrent-reconciles", 8, "the operator's --max-concurrent-reconciles")
	fs.Float64Var(&o.kmsQPS, "kms-qps", 1000, "the operator's --kms-qps (high, so that the limit is not the bottleneck)")
	fs.IntVar(&o.kmsBurst, "kms-burst", 1000, "the operator's --kms-burst")
	fs.BoolVar(&o.baseline, "baseline", true, "also run the naive CronJob-style baseline for scenarios a, b and c")
	fs.IntVar(&o.naiveWorkers, "naive-workers", 8, "how many selectors the naive baseline syncs at the same time")
	fs.StringVar(&o.profile, "profile", "", "the scenario during which to take pprof CPU and heap profiles of the operator and the API server, such as b; none by default, as profiling slows the run it measures")
	fs.DurationVar(&o.cpuProfile, "cpu-profile", 30*time.Second, "length of the CPU profile, started when the selectors are applied")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 0, "how long to wait for every selector to become Ready; by default each scenario's own: 3m, and 10m for (e)")
	fs.DurationVar(&o.soakDuration, "soak-duration", 6*time.Minute, "how long scenario k watches its selectors once all are Synced; its id-token exchange target scales with it")
	fs.Func("operator-env", "an extra NAME=value environment variable of the operator, such as GOMEMLIMIT=120MiB; repeatable", func(v string) error {
		if !strings.Contains(v, "=") {
			return fmt.Errorf("want NAME=value, got %q", v)
		}
		o.operatorEnv = append(o.operatorEnv, v)
		return nil
	})
	fs.BoolVar(&o.verbose, "v", false, "copy the operator's log to stderr too")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.refresh != 0 && o.refresh < 10*time.Second {
		return o, fmt.Errorf("--refresh-interval must be at least 10s, got %s", o.refresh)
	}
	if o.readyTimeout < 0 {
		return o, fmt.Errorf("--ready-timeout must not be negative, got %s", o.readyTimeout)
	}
	if o.scale <= 0 || o.scale > 1 {
		return o, fmt.Errorf("--scale must be in (0, 1], got %g", o.scale)
	}
	for _, s := range strings.Split(scenarios, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		sc, ok := scenarioByName(s)
		if !ok {
			return o, fmt.Errorf("unknown scenario %q: want some of %s", s, scenarioNames())
		}
		o.scenarios = append(o.scenarios, sc.resolve(o))
	}
	if len(o.scenarios) == 0 {
		return o, errors.New("--scenarios names no scenario")
	}
	if o.soakDuration <= 0 {
		return o, fmt.Errorf("--soak-duration must be positive, got %s", o.soakDuration)
	}
	return o, nil
}

func main() {
	o, err := parseOptions(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctrl.SetLogger(zap.New(zap.Level(zapcore.ErrorLevel), zap.WriteTo(os.Stderr)))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	results, err := run(ctx, o)
	interrupted := ctx.Err() != nil
	stop()
	if len(results) > 0 {
		writeReport(os.Stdout, o, machineInfo(), results)
	}
	switch {
	case interrupted:
		fmt.Fprintln(os.Stderr, "bench interrupted; everything it started is stopped")
		os.Exit(130)
	case err != nil:
		fmt.Fprintf(os.Stderr, "bench failed: %v\n", err)
		os.Exit(1)
	}
}

// run runs the scenarios in turn. A failed scenario is reported and the next one runs; an
// interrupt stops at once.
func run(ctx context.Context, o options) ([]*result, error) {
	if _, err := os.Stat(o.manager); err != nil {
		return nil, fmt.Errorf("the operator binary: %w (make bench builds it with go build -o bin/manager .)", err)
	}
	if err := os.MkdirAll(o.outDir, 0o755); err != nil {
		return nil, err
	}
	var results []*result
	var errs []error
	for _, sc := range o.scenarios {
		progress("=== scenario %s: %s", sc.name, sc.title)
		started := time.Now()
		res, err := runScenario(ctx, o, sc)
		results = append(results, res)
		if err != nil {
			res.err = err
			errs = append(errs, fmt.Errorf("scenario %s: %w", sc.name, err))
			progress("scenario %s failed after %s: %v", sc.name, since(started), err)
		} else {
			progress("scenario %s done in %s", sc.name, since(started))
		}
		if ctx.Err() != nil {
			break
		}
	}
	return results, errors.Join(errs...)
}

// progress reports what the bench does, on stderr, with the time of day.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05.0"), fmt.Sprintf(format, args...))
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }
