package render

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

func evalOne(t *testing.T, src string, keys []Key) (string, error) {
	t.Helper()
	out, err := compileOne(t, src).Eval(context.Background(), keys)
	return out["out"], err
}

func TestExpressions(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{`keys.byAlias("payments-db").id`, "0a000000-0000-4000-8000-000000000001"},
		{`keys.filter(k, k.state == "Enabled").map(k, k.alias)`, `["payments-db","search-index"]`},
		{`keys.filter(k, k.tags["team"] == "search").map(k, k.id).join(",")`, "0c000000-0000-4000-8000-000000000003"},
		{`keys.slice(0, 3).sortBy(k, k.alias).map(k, k.alias).join(",")`, "payments-api,payments-db,search-index"},
		{`keys.byAlias("search-index").tags`, `{"env":"staging","team":"search"}`},
		{`toJson(keys.byAlias("search-index").tags)`, `{"env":"staging","team":"search"}`},
		{`toYaml({"b": [1, 2], "a": keys.byAlias("search-index").alias})`, "a: search-index\nb:\n- 1\n- 2\n"},
		{`keys[0]`, `{"id":"0a000000-0000-4000-8000-000000000001","alias":"payments-db","state":"Enabled","spec":"AES_256","usage":"ENCRYPT_DECRYPT","origin":"kms","tags":{"env":"prod","team":"payments"},"creationDate":"2018-03-19T08:47:57Z"}`},
		{`"%s=%d".format([keys[1].alias.upperAscii().replace("-", "_"), keys.size()])`, "PAYMENTS_API=3"},
		{`keys.slice(0, 3).map(k, k.spec).distinct()`, `["AES_256","RSA_2048"]`},
		{`sets.contains(keys.map(k, k.alias), ["payments-db"])`, "true"},
		{`"missing" in keys[1].tags ? "yes" : "no"`, "no"},
		{`keys[1].creationDate == ""`, "true"},
		{`{"z": 1, "a": 2.5, "m": null}`, `{"a":2.5,"m":null,"z":1}`},
	} {
		got, err := evalOne(t, tc.src, threeKeys())
		if err != nil || got != tc.want {
			t.Errorf("%s = %q, %v; want %q", tc.src, got, err, tc.want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"keys.map(k, k.idd)", "line 1, column 14: undefined field 'idd'"},
		{"keys.map(k,\n  nosuch(k))", "line 2, column 9: undeclared reference to 'nosuch'"},
		{"keys.filter(k, k.state == ", "line 1, column 27: Syntax error"},
		{"keys.byAlias(1)", "found no matching overload for 'byAlias'"},
		{strings.Repeat("x", MaxExpressionLength+1), "more than 4096"},
		{strings.Repeat("[", MaxNesting+1) + strings.Repeat("]", MaxNesting+1), "expression recursion limit exceeded: 32"},
		{"keys.map(a, keys.map(b, a.id + b.id))", "more than 50000000"},
	} {
		_, err := Compile(kmsv1alpha1.TargetSpec{Data: map[string]string{"bad": tc.src}})
		var spec *SpecError
		if !errors.As(err, &spec) || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), `spec.target.data["bad"]: `) {
			t.Errorf("%.60q: err = %v, want a SpecError naming the entry and %q", tc.src, err, tc.want)
		}
	}
}

func TestEvalErrors(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{`keys.byAlias("gone").id`, `no matching key has the alias "gone"`},
		{`keys.filter(k, k.state == "PendingImport")[0].id`, "index out of bounds"},
		{`{1: "a"}`, "keys other than strings"},
		{`1.0 / 0.0`, "+Inf cannot be written as JSON"},
	} {
		_, err := evalOne(t, tc.src, threeKeys())
		var failed *ExpressionError
		if !errors.As(err, &failed) || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), `spec.target.data["out"]: `) {
			t.Errorf("%s: err = %v, want an ExpressionError naming the entry and %q", tc.src, err, tc.want)
		}
	}
}

func TestMergePolicies(t *testing.T) {
	keys := threeKeys()[:1]
	for _, tc := range []struct {
		policy kmsv1alpha1.MergePolicy
		want   string
	}{
		{kmsv1alpha1.MergePolicyMerge, "0a000000-0000-4000-8000-000000000001,keys.json,out"},
		{"", "0a000000-0000-4000-8000-000000000001,keys.json,out"},
		{kmsv1alpha1.MergePolicyReplace, "0a000000-0000-4000-8000-000000000001,out"},
	} {
		exprs, err := Compile(kmsv1alpha1.TargetSpec{MergePolicy: tc.policy, Data: map[string]string{"out": `"x"`, keys[0].ID: `"expressed"`}})
		if err != nil {
			t.Fatal(err)
		}
		c, err := Render(context.Background(), keys, exprs)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(exprs.Entries(), ","); !exprs.Defines("out") || got != "0a000000-0000-4000-8000-000000000001,out" {
			t.Errorf("entries = %s", got)
		}
		if got := strings.Join(slices.Sorted(maps.Keys(c.Data)), ","); got != tc.want {
			t.Errorf("%q: entries %s, want %s", tc.policy, got, tc.want)
		}
		if c.Data[keys[0].ID] != "expressed" {
			t.Errorf("%q: the expression did not win the clash: %q", tc.policy, c.Data[keys[0].ID])
		}
	}
}

func TestOutputIsDeterministicAtScale(t *testing.T) {
	keys := manyKeys(10_000)
	exprs, err := Compile(kmsv1alpha1.TargetSpec{MergePolicy: kmsv1alpha1.MergePolicyReplace, Data: map[string]string{
		"first.json": `keys[0]`,
		"enabled":    `keys.filter(k, k.state == "Enabled").map(k, k.id)`,
		"tags.yaml":  `toYaml(keys.map(k, k.tags).slice(0, 100))`,
	}})
	if err != nil {
		t.Fatal(err)
	}
	first, err := Render(context.Background(), keys, exprs)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		again, err := Render(context.Background(), keys, exprs)
		if err != nil || again.Digest() != first.Digest() {
			t.Fatalf("a second rendering differs: %v", err)
		}
	}
}

func TestEstimatesAddUpAcrossEntries(t *testing.T) {
	dotenv := `keys.map(k, k.alias.upperAscii().replace("-", "_") + "_KEY_ID=" + k.id + "\n").join("")`
	data := map[string]string{}
	for _, name := range []string{"a", "b", "c", "d"} {
		data[name] = dotenv
		_, err := Compile(kmsv1alpha1.TargetSpec{Data: data})
		if over := len(data) == 4; over != (err != nil) {
			t.Fatalf("%d entries of about 15M each: err = %v", len(data), err)
		}
	}
}
