package render

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

var update = flag.Bool("update", false, "write the golden files of TestReadmeRecipes")

// readmeRecipes reads the recipes of the README's Output expressions section: each is a
// KmsKeySelector in a yaml block that sets spec.target.data.
func readmeRecipes(t testing.TB) map[string]kmsv1alpha1.TargetSpec {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme)[strings.Index(string(readme), "\n## Output expressions"):]
	section = section[:strings.Index(section[1:], "\n## ")+1]
	out := map[string]kmsv1alpha1.TargetSpec{}
	for _, block := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(section, -1) {
		if !strings.Contains(block[1], "kind: KmsKeySelector") {
			continue
		}
		sel := &kmsv1alpha1.KmsKeySelector{}
		if err := yaml.UnmarshalStrict([]byte(block[1]), sel); err != nil {
			t.Fatalf("a README recipe does not parse: %v\n%s", err, block[1])
		}
		if len(sel.Spec.Target.Data) > 0 {
			out[sel.Name] = sel.Spec.Target
		}
	}
	if len(out) != 3 {
		t.Fatalf("the README's Output expressions section has %d recipes, want 3", len(out))
	}
	return out
}

// TestReadmeRecipes renders each recipe of the README, as written, and compares every entry
// with testdata/recipes/<selector>/<entry>. Run with -update to write them.
func TestReadmeRecipes(t *testing.T) {
	for name, target := range readmeRecipes(t) {
		exprs, err := Compile(target)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c, err := Render(context.Background(), threeKeys(), exprs)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for entry := range target.Data {
			path := filepath.Join("testdata", "recipes", name, entry)
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(c.Data[entry]), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%s: %v (run go test -run TestReadmeRecipes -update)", name, err)
			}
			if c.Data[entry] != string(want) {
				t.Errorf("%s: entry %s =\n%s\nwant (%s)\n%s", name, entry, c.Data[entry], path, want)
			}
		}
	}
}

// TestReadmeRecipesFitTheBudget renders each recipe over MaxKeys keys and checks that the
// estimate admits it and that it spends at most a third of the budget.
func TestReadmeRecipesFitTheBudget(t *testing.T) {
	keys := manyKeys(MaxKeys)
	env, err := environment()
	if err != nil {
		t.Fatal(err)
	}
	for name, target := range readmeRecipes(t) {
		exprs, err := Compile(target)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, entry := range exprs.Entries() {
			estimate, err := env.EstimateCost(exprs.byEntry[entry], newEstimator(exprs.byEntry[entry]))
			if err != nil {
				t.Fatal(err)
			}
			alloc := &allocation{}
			_, cost, err := evaluate(context.Background(), env, exprs.byEntry[entry], map[string]any{"keys": keys}, Budget, alloc)
			if err != nil || cost > Budget/3 || estimate.Max > MaxEstimatedCost/3 {
				t.Errorf("%s: over %d keys cost %d, err %v; want at most %d", name, len(keys), cost, err, Budget/3)
			}
			t.Logf("%s over %d keys: estimated cost at most %d, cost %d, %d bytes built", name, len(keys), estimate.Max, cost, alloc.bytes)
		}
	}
}

// BenchmarkRecipes10kKeys renders each README recipe over 10,000 keys, one in three Enabled, as
// make bench reports in docs/benchmarks.md.
func BenchmarkRecipes10kKeys(b *testing.B) {
	keys := keysEnabledEvery(10_000, 3)
	for name, target := range readmeRecipes(b) {
		b.Run(name, func(b *testing.B) {
			exprs, err := Compile(target)
			if err != nil {
				b.Fatal(err)
			}
			var size int
			for b.Loop() {
				out, err := exprs.Eval(context.Background(), keys)
				if err != nil {
					b.Fatal(err)
				}
				size = 0
				for _, v := range out {
					size += len(v)
				}
			}
			b.ReportMetric(float64(size), "bytes")
		})
	}
}
