package render

import (
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/functions"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
	"github.com/google/cel-go/interpreter"
)

// sizeChecks guard the functions that can return much more than they are given. CEL charges a
// call when it returns, so without a check before it one call could allocate far beyond the
// budget: join of a list that holds one long string many times, replace of "" in a long string,
// format with many verbs. Each check refuses a string longer than a ConfigMap holds, a list
// longer than maxListSize, or a quadratic call longer than maxCallSteps.
var sizeChecks = map[string]func(args []ref.Val) error{
	"_+_":             checkAdd,
	"join":            checkJoin,
	"replace":         checkReplace,
	"format":          checkFormat,
	"flatten":         checkFlatten,
	"sets.contains":   checkProduct,
	"sets.intersects": checkProduct,
	"sets.equivalent": checkProduct,
	"matches":         checkProduct,
}

// allocating are the other functions that return new strings or lists, as large as their
// input at most; with those of sizeChecks they count against maxAllocatedBytes.
var allocating = map[string]bool{
	"upperAscii": true, "lowerAscii": true, "trim": true, "reverse": true, "strings.quote": true,
	"split": true, "string": true, "bytes": true, "toJson": true, "toYaml": true,
	"lists.range": true, "sort": true, "distinct": true, "slice": true, "@sortByAssociatedKeys": true,
}

// allocation counts the bytes that the calls of one rendering return, so that memory stays
// bounded even where CEL's cost, which counts a tenth of a unit per byte, would allow more.
type allocation struct {
	bytes int
}

func (a *allocation) add(v ref.Val) error {
	switch v := v.(type) {
	case types.String:
		a.bytes += len(v)
	case types.Bytes:
		a.bytes += len(v)
	case traits.Lister:
		a.bytes += 16 * int(sizeOf(v))
	}
	if a.bytes > maxAllocatedBytes {
		return fmt.Errorf("the expressions built more than %d bytes of strings and lists", maxAllocatedBytes)
	}
	return nil
}

// guard wraps every call of a function of sizeChecks with its check, and every call of those
// and of allocating with the count of alloc.
func guard(env *cel.Env, alloc *allocation) interpreter.InterpretableDecoratorV2 {
	impls := bound(env)
	return func(i interpreter.InterpretableV2) (interpreter.InterpretableV2, error) {
		call, ok := i.(interpreter.InterpretableCall)
		if !ok {
			return i, nil
		}
		check := sizeChecks[call.Function()]
		if check == nil && !allocating[call.Function()] {
			return i, nil
		}
		impl := impls[call.OverloadID()]
		if impl == nil {
			impl = impls[call.Function()]
		}
		if impl == nil {
			return nil, fmt.Errorf("no implementation of %s", call.Function())
		}
		return interpreter.NewCall(call.ID(), call.Function(), call.OverloadID(), call.Args(), func(args ...ref.Val) ref.Val {
			if check != nil {
				if err := check(args); err != nil {
					return types.NewErr("%s: %v", call.Function(), err)
				}
			}
			out := impl(args...)
			built := out
			if _, ok := args[0].(traits.MutableLister); ok {
				// A comprehension appending to its result: only the appended part is new.
				built = args[1]
			}
			if err := alloc.add(built); err != nil {
				return types.NewErr("%s: %v", call.Function(), err)
			}
			return out
		}), nil
	}
}

// bound holds the functions of the one environment by overload id and by name, as the planner
// binds them.
var bound = func() func(*cel.Env) map[string]functions.FunctionOp {
	var once sync.Once
	var impls map[string]functions.FunctionOp
	return func(env *cel.Env) map[string]functions.FunctionOp {
		once.Do(func() { impls = implementations(env) })
		return impls
	}
}()

func implementations(env *cel.Env) map[string]functions.FunctionOp {
	out := map[string]functions.FunctionOp{}
	for _, fn := range env.Functions() {
		bindings, err := fn.Bindings()
		if err != nil {
			continue
		}
		for _, o := range bindings {
			out[o.Operator] = asFunctionOp(o)
		}
	}
	return out
}

func asFunctionOp(o *functions.Overload) functions.FunctionOp {
	return func(args ...ref.Val) ref.Val {
		if o.OperandTrait != 0 && !args[0].Type().HasTrait(o.OperandTrait) {
			return types.NoSuchOverloadErr()
		}
		switch {
		case len(args) == 1 && o.Unary != nil:
			return o.Unary(args[0])
		case len(args) == 2 && o.Binary != nil:
			return o.Binary(args[0], args[1])
		case o.Function != nil:
			return o.Function(args...)
		}
		return types.NoSuchOverloadErr()
	}
}

func checkString(n int) error {
	if n > MaxDataBytes {
		return fmt.Errorf("would build a string of %d bytes, more than the %d a ConfigMap holds", n, MaxDataBytes)
	}
	return nil
}

func checkList(n int) error {
	if n > maxListSize {
		return fmt.Errorf("would build a list of %d elements, more than %d", n, maxListSize)
	}
	return nil
}

func checkAdd(args []ref.Val) error {
	switch a := args[0].(type) {
	case types.String:
		if b, ok := args[1].(types.String); ok {
			return checkString(len(a) + len(b))
		}
	case types.Bytes:
		if b, ok := args[1].(types.Bytes); ok {
			return checkString(len(a) + len(b))
		}
	case traits.Lister:
		return checkList(int(sizeOf(a) + sizeOf(args[1])))
	}
	return nil
}

func checkJoin(args []ref.Val) error {
	list, ok := args[0].(traits.Lister)
	if !ok {
		return nil
	}
	sep := 0
	if len(args) > 1 {
		if s, ok := args[1].(types.String); ok {
			sep = len(s)
		}
	}
	n := 0
	for it := list.Iterator(); it.HasNext() == types.True && n <= MaxDataBytes; {
		if s, ok := it.Next().(types.String); ok {
			n += len(s) + sep
		}
	}
	return checkString(n)
}

func checkReplace(args []ref.Val) error {
	s, ok1 := args[0].(types.String)
	old, ok2 := args[1].(types.String)
	repl, ok3 := args[2].(types.String)
	if !ok1 || !ok2 || !ok3 {
		return nil
	}
	count := strings.Count(string(s), string(old))
	if len(args) > 3 {
		if limit, ok := args[3].(types.Int); ok && limit >= 0 {
			count = min(count, int(limit))
		}
	}
	return checkString(len(s) + count*(len(repl)-len(old)))
}

// checkFormat bounds the result by every verb of the format string writing all arguments.
func checkFormat(args []ref.Val) error {
	format, ok := args[0].(types.String)
	if !ok {
		return nil
	}
	verbs := strings.Count(string(format), "%")
	return checkString(len(format) + verbs*approxBytes(args[1], MaxDataBytes+1))
}

// approxBytes is about how many bytes v takes as text, counted up to limit.
func approxBytes(v ref.Val, limit int) int {
	switch v := v.(type) {
	case types.String:
		return len(v)
	case types.Bytes:
		return 2 * len(v)
	case traits.Lister:
		n := 0
		for it := v.Iterator(); it.HasNext() == types.True && n < limit; {
			n += 2 + approxBytes(it.Next(), limit-n)
		}
		return n
	case traits.Mapper:
		n := 0
		for it := v.Iterator(); it.HasNext() == types.True && n < limit; {
			k := it.Next()
			n += 4 + approxBytes(k, limit-n) + approxBytes(v.Get(k), limit-n)
		}
		return n
	}
	return 32
}

func checkFlatten(args []ref.Val) error {
	if _, ok := args[0].(traits.Lister); !ok {
		return nil
	}
	depth := 1
	if len(args) > 1 {
		if d, ok := args[1].(types.Int); ok {
			depth = int(max(min(d, 64), 1))
		}
	}
	return checkList(flattened(args[0], depth, maxListSize+1))
}

// flattened is how many elements flattening v to depth, at least 1, gives, counted up to limit.
func flattened(v ref.Val, depth, limit int) int {
	n := 0
	for it := v.(traits.Lister).Iterator(); it.HasNext() == types.True && n < limit; {
		switch e := it.Next().(type) {
		case traits.Lister:
			if depth > 1 {
				n += flattened(e, depth-1, limit-n)
			} else {
				n += int(sizeOf(e))
			}
		default:
			n++
		}
	}
	return n
}

// checkProduct bounds a call whose work is the product of its two arguments' sizes.
func checkProduct(args []ref.Val) error {
	a, b := textOrListSize(args[0]), textOrListSize(args[1])
	if a*b > maxCallSteps {
		return fmt.Errorf("would take %d × %d steps, more than %d", a, b, maxCallSteps)
	}
	return nil
}

func textOrListSize(v ref.Val) int {
	if s, ok := v.(types.String); ok {
		return utf8.RuneCountInString(string(s))
	}
	return int(sizeOf(v))
}
