package render

import (
	"context"
	"errors"
	"testing"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

// FuzzExpression: compiling and evaluating any expression never panics, not even inside a
// function; whatever fails is a SpecError or an ExpressionError, and whatever renders fits in a
// ConfigMap. Longer run: go test -run=^$ -fuzz=FuzzExpression -fuzztime=30s ./internal/render/
func FuzzExpression(f *testing.F) {
	for _, s := range []string{
		`keys.byAlias("payments-db").id`,
		`keys.filter(k, k.state == "Enabled")`,
		`keys.filter(k, k.alias != "").map(k, k.alias.upperAscii().replace("-", "_") + "_KEY_ID=" + k.id + "\n").join("")`,
		`toYaml({"a": keys.map(k, k.tags)})`,
		`"%s %d %v".format([keys[0], 1, [1.5]])`,
		`lists.range(10).map(i, keys[i].id).flatten()`,
		`keys.sortBy(k, k.alias).distinct().slice(0, 2)`,
		`sets.contains(keys.map(k, k.id), ["x"]) ? b"x" : null`,
		`"a".replace("", "bb").replace("", "cc").split("b")`,
		`[[[[]]]]`, `1/0`, `keys[-1]`, `"\xff"`, `{1: 2}`, `duration("1s")`, `timestamp("2026-01-01T00:00:00Z")`,
	} {
		f.Add(s)
	}
	keys := manyKeys(200)
	f.Fuzz(func(t *testing.T, src string) {
		exprs, err := Compile(kmsv1alpha1.TargetSpec{Data: map[string]string{"out": src}})
		var spec *SpecError
		if err != nil {
			if !errors.As(err, &spec) {
				t.Fatalf("compile %q: %v is not a *SpecError", src, err)
			}
			return
		}
		out, err := exprs.Eval(context.Background(), keys)
		var failed *ExpressionError
		switch {
		case errors.Is(err, errPanicked):
			t.Fatalf("evaluating %q panicked: %v", src, err)
		case err != nil && !errors.As(err, &failed):
			t.Fatalf("evaluating %q: %v is not an *ExpressionError", src, err)
		case len(out["out"]) > MaxDataBytes:
			t.Fatalf("%q rendered %d bytes", src, len(out["out"]))
		}
	})
}
