package render

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
	"github.com/google/cel-go/ext"
	"github.com/google/cel-go/interpreter"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

const (
	// Budget is the CEL cost that the expressions of one selector may spend, together, on one
	// rendering; the API server's unit, about one step of evaluation each. The README's recipes
	// spend at most about a quarter of it over MaxKeys keys (docs/benchmarks.md).
	Budget = 10_000_000
	// MaxEstimatedCost is the most that the expressions of one selector may be estimated to cost
	// over MaxKeys keys. An estimate takes every string at its longest, so it runs several times
	// above the cost spent; as the API server admits CRD rules estimated at ten times its
	// runtime limit, this admits five times the budget.
	MaxEstimatedCost = 5 * Budget
	// Timeout bounds one rendering of a selector's expressions, whatever their cost.
	Timeout = 2 * time.Second
	// MaxExpressionLength is the most characters in one expression; the CRD enforces it too.
	MaxExpressionLength = 4096
	// MaxNesting is the deepest nesting of calls, lists, maps and parentheses the parser takes.
	MaxNesting = 32
	// MaxKeys is the key list over which a cost is estimated before any evaluation: the most
	// keys a ConfigMap holds in its default entries, each "<36-character id>: <State>" taking at
	// least 95 bytes of MaxStoredBytes. A selector with mergePolicy Replace may list more; then
	// the runtime limit alone stops its expressions.
	MaxKeys = 15_000
	// maxListSize is the most elements a list may have; lists are built at a cost of one per
	// element at least, so this only refuses what the budget would refuse later and at a higher
	// price in memory.
	maxListSize = 1_000_000
	// maxCallSteps bounds the comparisons that one call of a quadratic function (sets.contains,
	// matches) may make: such a call is charged when it returns, and cannot be interrupted.
	maxCallSteps = 20_000_000
	// maxAllocatedBytes bounds the strings and lists that the calls of one rendering return,
	// together: the memory an evaluation can hold, whatever its cost.
	maxAllocatedBytes = 64 << 20
	// interruptEvery is how many comprehension steps run between checks of the deadline.
	interruptEvery = 100
)

// errPanicked marks a panic recovered from an evaluation.
var errPanicked = errors.New("evaluation failed")

// keyType is the CEL type of an element of keys.
var keyType = cel.ObjectType("render.Key")

// Expressions are the compiled expressions of a selector's spec.target, by entry name.
type Expressions struct {
	byEntry map[string]*cel.Ast
	replace bool
}

// Defines tells whether an expression renders the entry name; e may be nil.
func (e *Expressions) Defines(name string) bool {
	if e == nil {
		return false
	}
	_, ok := e.byEntry[name]
	return ok
}

// Entries returns the entry names that expressions render, sorted; e may be nil.
func (e *Expressions) Entries() []string {
	if e == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(e.byEntry))
}

// replaces tells whether the expressions' entries stand alone, without the default ones.
func (e *Expressions) replaces() bool {
	return e != nil && e.replace
}

func field(entry string) string { return fmt.Sprintf("spec.target.data[%q]", entry) }

// Compile compiles and type-checks the expressions of target, and estimates their cost over
// MaxKeys keys. An error is a *SpecError that names the entry and, for a compile error, the
// line and the column. With no data, the result is nil: the default entries only.
func Compile(target kmsv1alpha1.TargetSpec) (*Expressions, error) {
	if len(target.Data) == 0 {
		return nil, nil
	}
	env, err := environment()
	if err != nil {
		return nil, err
	}
	out := &Expressions{byEntry: map[string]*cel.Ast{}, replace: target.MergePolicy == kmsv1alpha1.MergePolicyReplace}
	var total uint64
	for _, name := range slices.Sorted(maps.Keys(target.Data)) {
		src := target.Data[name]
		if n := len([]rune(src)); n > MaxExpressionLength {
			return nil, &SpecError{Field: field(name), Err: fmt.Errorf("the expression has %d characters, more than %d", n, MaxExpressionLength)}
		}
		ast, issues := env.Compile(src)
		if issues.Err() != nil {
			return nil, &SpecError{Field: field(name), Err: positioned(issues)}
		}
		estimate, err := env.EstimateCost(ast, newEstimator(ast))
		if err != nil {
			return nil, &SpecError{Field: field(name), Err: fmt.Errorf("estimating the cost: %w", err)}
		}
		// An estimate that cannot be bounded leaves the expression to the runtime limit.
		if estimate.Max != math.MaxUint64 {
			if estimate.Max > MaxEstimatedCost-total {
				return nil, &SpecError{Field: field(name), Err: fmt.Errorf(
					"the expression may cost up to %d over %d keys, and a selector's expressions more than %d together; filter keys before nested comprehensions, or split the selector",
					estimate.Max, MaxKeys, MaxEstimatedCost)}
			}
			total += estimate.Max
		}
		out.byEntry[name] = ast
	}
	return out, nil
}

// positioned turns the errors cel.Issues holds after a compilation into one line per error:
// "line L, column C: message".
func positioned(issues *cel.Issues) error {
	var lines []string
	for _, e := range issues.Errors() {
		if e.Location.Line() < 1 {
			lines = append(lines, e.Message)
			continue
		}
		lines = append(lines, fmt.Sprintf("line %d, column %d: %s", e.Location.Line(), e.Location.Column()+1, e.Message))
	}
	return errors.New(strings.Join(lines, "; "))
}

// Eval evaluates every expression on keys, sorted by id, in name order, within Budget and
// Timeout together. A string result is written as it is, any other as JSON with its map keys
// sorted. An error is an *ExpressionError.
func (e *Expressions) Eval(ctx context.Context, keys []Key) (map[string]string, error) {
	if e == nil {
		return nil, nil
	}
	env, err := environment()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	vars := map[string]any{"keys": keys}
	out := make(map[string]string, len(e.byEntry))
	remaining, size := uint64(Budget), 0
	alloc := &allocation{}
	for _, name := range e.Entries() {
		s, cost, err := evaluate(ctx, env, e.byEntry[name], vars, remaining, alloc)
		if err != nil {
			return nil, &ExpressionError{Field: field(name), Err: err}
		}
		remaining -= min(cost, remaining)
		if size += len(name) + len(s); size > MaxDataBytes {
			return nil, &ExpressionError{Field: "spec.target.data", Err: fmt.Errorf("the expressions render more than %d bytes together", MaxDataBytes)}
		}
		out[name] = s
	}
	return out, nil
}

// evaluate runs one expression within limit and the deadline of ctx, and writes its result.
// Evaluation runs on the calling goroutine: it stops by itself, and leaves nothing behind.
func evaluate(ctx context.Context, env *cel.Env, ast *cel.Ast, vars map[string]any, limit uint64, alloc *allocation) (out string, cost uint64, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("%w: %v", errPanicked, r)
		}
	}()
	prg, err := env.Program(ast,
		cel.CostLimit(limit),
		cel.CostTrackerOptions(costTrackers()...),
		cel.InterruptCheckFrequency(interruptEvery),
		cel.CustomDecoratorV2(guard(env, alloc)),
	)
	if err != nil {
		return "", 0, err
	}
	val, details, err := prg.ContextEval(ctx, vars)
	if details != nil && details.ActualCost() != nil {
		cost = *details.ActualCost()
	}
	if err != nil {
		return "", cost, evalError(ctx, err, limit)
	}
	if s, ok := val.(types.String); ok {
		return string(s), cost, nil
	}
	b, err := toJSON(val)
	return string(b), cost, err
}

// evalError rewrites the errors of cancelled evaluations so that they say what to change.
func evalError(ctx context.Context, err error, limit uint64) error {
	var cancelled interpreter.EvalCancelledError
	switch {
	case errors.As(err, &cancelled) && cancelled.Cause == interpreter.CostLimitExceeded:
		return fmt.Errorf("the evaluation ran over the budget of %d (%d were left for this entry); filter keys before nested comprehensions, or build less", Budget, limit)
	case ctx.Err() != nil:
		return fmt.Errorf("the evaluation took longer than %s", Timeout)
	}
	return err
}

var environment = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		ext.NativeTypes(reflect.TypeFor[Key](), ext.ParseStructTag("json")),
		cel.Variable("keys", cel.ListType(keyType)),
		ext.Strings(),
		ext.Lists(ext.ListsMaxRangeSize(maxListSize)),
		ext.Sets(),
		cel.Function("byAlias", cel.MemberOverload("list_key_byAlias_string",
			[]*cel.Type{cel.ListType(keyType), cel.StringType}, keyType, cel.BinaryBinding(byAlias))),
		cel.Function("toJson", cel.Overload("toJson_dyn", []*cel.Type{cel.DynType}, cel.StringType,
			cel.UnaryBinding(func(v ref.Val) ref.Val { return encoded(toJSON(v)) }))),
		cel.Function("toYaml", cel.Overload("toYaml_dyn", []*cel.Type{cel.DynType}, cel.StringType,
			cel.UnaryBinding(func(v ref.Val) ref.Val { return encoded(toYAML(v)) }))),
		cel.ParserRecursionLimit(MaxNesting),
		cel.ParserExpressionSizeLimit(MaxExpressionLength),
	)
})

func encoded(b []byte, err error) ref.Val {
	if err != nil {
		return types.WrapErr(err)
	}
	return types.String(b)
}

// byAlias returns the key of list whose alias is alias, or an error naming the alias.
func byAlias(list, alias ref.Val) ref.Val {
	want := string(alias.(types.String))
	for it := list.(traits.Lister).Iterator(); it.HasNext() == types.True; {
		v := it.Next()
		if k, ok := v.Value().(Key); ok && k.Alias == want {
			return v
		}
	}
	return types.NewErr("no matching key has the alias %q", want)
}

// costTrackers charge the functions of this package, and format, by the size of what they
// return, as the standard library charges the strings it builds.
func costTrackers() []interpreter.CostTrackerOption {
	bySize := func(_ []ref.Val, result ref.Val) *uint64 {
		c := 1 + uint64(math.Ceil(float64(sizeOf(result))*common.StringTraversalCostFactor))
		return &c
	}
	byListSize := func(args []ref.Val, _ ref.Val) *uint64 {
		c := 1 + sizeOf(args[0])
		return &c
	}
	return []interpreter.CostTrackerOption{
		interpreter.OverloadCostTracker("toJson_dyn", bySize),
		interpreter.OverloadCostTracker("toYaml_dyn", bySize),
		interpreter.OverloadCostTracker("string_format", bySize),
		interpreter.OverloadCostTracker("list_key_byAlias_string", byListSize),
	}
}

func sizeOf(v ref.Val) uint64 {
	if s, ok := v.(traits.Sizer); ok {
		if n, ok := s.Size().(types.Int); ok && n > 0 {
			return uint64(n)
		}
	}
	return 0
}
