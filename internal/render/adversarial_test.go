package render

import (
	"context"
	"errors"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

const runtimeLimit = "runtime limit"

// hostile are expressions that a tenant could write to exhaust the operator, each with the
// error that must stop it: at compile time when the cost estimate or the parser sees it, else at
// run time. Those written with dyn() hide their size from the estimate, so that only the runtime
// limits stand in their way.
var hostile = []struct {
	name, src string
	// compile is the compile error, or "" when the expression must fail while it runs with eval;
	// "runtime limit" is the budget or the deadline, whichever the machine reaches first.
	compile, eval string
}{
	{"nested comprehensions", `keys.map(a, keys.map(b, keys.map(c, a.id + b.id + c.id)))`, "more than 50000000", ""},
	{"nested comprehensions, size hidden", `dyn(keys).map(a, dyn(keys).map(b, dyn(keys).map(c, a.id + b.id + c.id)))`, "", runtimeLimit},
	{"string doubling", `lists.range(64).map(i, 1).map(i, keys[0].id).map(s, s + s + s + s).map(s, s + s + s + s).map(s, s + s + s + s).map(s, s + s + s + s).map(s, s + s + s + s).map(s, s + s + s + s).map(s, s + s + s + s)`, "", ""},
	{"repeat-style growth with replace", `keys[0].id.replace("", keys[0].id).replace("", keys[0].id).replace("", keys[0].id)`, "", "would build a string"},
	{"repeat-style growth with format", `dyn(lists.range(2000).map(i, "%s").join("")).format(dyn(lists.range(2000).map(i, keys[0].id)))`, "", "would build a string"},
	{"repeat-style growth with join", `lists.range(100000).map(i, keys.map(k, k.alias).join("")).join("")`, "more than 50000000", ""},
	{"repeat-style growth with join, size hidden", `[keys.map(k, k.id).join("")].map(s, dyn(lists.range(10000).map(i, s)).join(""))`, "", "would build a string"},
	{"huge list construction", `lists.range(1000000).map(i, lists.range(1000000))`, "more than 50000000", ""},
	{"huge list construction, size hidden", `dyn(lists.range(1000000)).map(i, dyn(keys))`, "", runtimeLimit},
	{"flatten of shared lists", `dyn(lists.range(1000).map(i, keys)).flatten()`, "", "would build a list"},
	{"quadratic sets", `sets.contains(keys.map(k, k.id + "x"), keys.map(k, k.alias))`, "more than 50000000", ""},
	{"JSON of shared values", `lists.range(10000).map(i, keys)`, "", "more than the 1024000 bytes"},
	{"deep nesting", strings.Repeat("[", 200) + strings.Repeat("]", 200), "recursion limit exceeded", ""},
	{"deep nesting of calls", strings.Repeat("size(", 100) + "keys" + strings.Repeat(")", 100), "recursion limit exceeded", ""},
	{"very long literal", `"` + strings.Repeat("x", 100_000) + `"`, "more than 4096", ""},
}

// TestHostileExpressions runs each hostile expression over 15,000 keys and checks that it ends
// with its error. It logs the time to the error and the peak heap, which docs/benchmarks.md
// reports; they are not asserted, as they depend on the machine.
func TestHostileExpressions(t *testing.T) {
	keys := manyKeys(MaxKeys)
	for _, tc := range hostile {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			elapsed, peak := measure(func() {
				var exprs *Expressions
				if exprs, err = Compile(kmsv1alpha1.TargetSpec{Data: map[string]string{"out": tc.src}}); err == nil {
					_, err = exprs.Eval(context.Background(), keys)
				}
			})
			t.Logf("%s: %v after %v, peak heap %d MiB above baseline", tc.name, err, elapsed.Round(time.Millisecond), peak>>20)
			var spec *SpecError
			var failed *ExpressionError
			switch {
			case tc.compile != "":
				if !errors.As(err, &spec) || !strings.Contains(err.Error(), tc.compile) {
					t.Errorf("err = %v, want a SpecError with %q", err, tc.compile)
				}
			case tc.eval == runtimeLimit:
				if !errors.As(err, &failed) || !strings.Contains(err.Error(), "over the budget") && !strings.Contains(err.Error(), "took longer than") {
					t.Errorf("err = %v, want an ExpressionError of the budget or the deadline", err)
				}
			case !errors.As(err, &failed) || !strings.Contains(err.Error(), tc.eval):
				t.Errorf("err = %v, want an ExpressionError with %q", err, tc.eval)
			}
		})
	}
}

// measure runs f and returns how long it took and the peak of the heap in use above what it
// was before, sampled every millisecond.
func measure(f func()) (time.Duration, uint64) {
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	base, peak := read(), uint64(0)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			if n := read(); n > base && n-base > peak {
				peak = n - base
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	f()
	elapsed := time.Since(start)
	close(done)
	wg.Wait()
	return elapsed, peak
}
