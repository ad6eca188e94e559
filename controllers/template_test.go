package controllers

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

func templateKeys() []keyRecord {
	return records([]kms.Key{
		{ID: "0a000000-0000-4000-8000-000000000001", Alias: "payments-db", State: kms.StateEnabled, Spec: "AES_256", Usage: "ENCRYPT_DECRYPT", Origin: "kms",
			Tags: map[string]string{"env": "prod", "team": "payments"}, CreationDate: time.Unix(1521449277, 0)},
		{ID: "0b000000-0000-4000-8000-000000000002", Alias: "payments-api", State: kms.StateDisabled, Spec: "RSA_2048", Usage: "SIGN_VERIFY", Origin: "kms",
			Tags: map[string]string{"env": "prod", "team": "payments"}},
		{ID: "0c000000-0000-4000-8000-000000000003", Alias: "search-index", State: kms.StateEnabled, Spec: "AES_256", Usage: "ENCRYPT_DECRYPT", Origin: "external",
			Tags: map[string]string{"env": "staging", "team": "search"}},
	})
}

func renderOne(t *testing.T, src string) (string, error) {
	t.Helper()
	tpls, err := parseTemplates(&kmsv1alpha1.TargetTemplate{Data: map[string]string{"out": src}})
	if err != nil {
		t.Fatalf("parse %q: %v", src, err)
	}
	out, err := tpls.render(templateKeys())
	return out["out"], err
}

func TestTemplateFunctions(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{`{{ (byAlias "payments-db").ID }}`, "0a000000-0000-4000-8000-000000000001"},
		{`{{ range enabled .Keys }}{{ .Alias }} {{ end }}`, "payments-db search-index "},
		{`{{ range .Keys | inState "Disabled" }}{{ .Alias }}{{ end }}`, "payments-api"},
		{`{{ range .Keys | withTag "team" "search" }}{{ .ID }}{{ end }}`, "0c000000-0000-4000-8000-000000000003"},
		{`{{ (first .Keys).Alias }}`, "payments-db"},
		{`{{ range sortBy "Alias" .Keys }}{{ .Alias }},{{ end }}`, "payments-api,payments-db,search-index,"},
		{`{{ ids .Keys | join "," }}`, "0a000000-0000-4000-8000-000000000001,0b000000-0000-4000-8000-000000000002,0c000000-0000-4000-8000-000000000003"},
		{`{{ (byAlias "search-index").Tags | toJson }}`, `{"env":"staging","team":"search"}`},
		{`{{ (byAlias "search-index").Tags | toYaml }}`, "env: staging\nteam: search"},
		{`{{ "payments-db" | upper | replace "-" "_" }}`, "PAYMENTS_DB"},
		{`{{ "A-B" | lower }} {{ "kms-x" | trimPrefix "kms-" }} {{ "x.json" | trimSuffix ".json" }}`, "a-b x x"},
		{`{{ (byAlias "payments-db").CreationDate }} {{ (byAlias "payments-api").CreationDate }}.`, "2018-03-19T08:47:57Z ."},
		{`{{ (byAlias "payments-api").State }} {{ index (byAlias "payments-api").Tags "missing" }}.`, "Disabled ."},
	} {
		got, err := renderOne(t, tc.src)
		if err != nil || got != tc.want {
			t.Errorf("%s = %q, %v; want %q", tc.src, got, err, tc.want)
		}
	}
}

func TestTemplateErrors(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{`{{ (byAlias "gone").ID }}`, `no matching key has the alias "gone"`},
		{`{{ first (inState "PendingImport" .Keys) }}`, "first of an empty list"},
		{`{{ sortBy "Color" .Keys }}`, `no field "Color"`},
		{`{{ .Nope }}`, "Nope"},
	} {
		_, err := renderOne(t, tc.src)
		if f := asFailure(err); f == nil || f.reason != kmsv1alpha1.ReasonTemplateFailed || !strings.Contains(err.Error(), tc.want) ||
			!strings.Contains(err.Error(), `spec.target.template.data["out"]`) {
			t.Errorf("%s: err = %v, want TemplateFailed naming the entry and %q", tc.src, err, tc.want)
		}
	}
	for _, tc := range []struct{ src, want string }{
		{"line one\n  {{ nosuch .Keys }}", `line 2, column 6: function "nosuch" not defined`},
		{"{{ .ID ", "line 1, column 1: unclosed action"},
		{"{{ range 100000000 }}x{{ end }}", "range over a number is not allowed"},
	} {
		_, err := parseTemplates(&kmsv1alpha1.TargetTemplate{Data: map[string]string{"bad": tc.src}})
		if f := asFailure(err); f == nil || f.reason != kmsv1alpha1.ReasonInvalidSpec || !strings.Contains(err.Error(), tc.want) ||
			!strings.Contains(err.Error(), `spec.target.template.data["bad"]`) {
			t.Errorf("%q: err = %v, want InvalidSpec naming the entry and %q", tc.src, err, tc.want)
		}
	}
}

func TestTemplateLimits(t *testing.T) {
	_, err := renderOne(t, `{{ range .Keys }}{{ range $.Keys }}{{ range $.Keys }}`+strings.Repeat("x", 40_000)+`{{ end }}{{ end }}{{ end }}`)
	if f := asFailure(err); f == nil || f.reason != kmsv1alpha1.ReasonTemplateFailed || !strings.Contains(err.Error(), "more than") {
		t.Errorf("a template rendering over the cap: err = %v, want TemplateFailed", err)
	}
}

func TestTemplateMergePolicies(t *testing.T) {
	keys := []kms.Key{{ID: "k1", Alias: "a", State: kms.StateEnabled}}
	for _, tc := range []struct {
		policy kmsv1alpha1.MergePolicy
		want   []string
	}{
		{kmsv1alpha1.MergePolicyMerge, []string{"k1", kmsv1alpha1.KeysJSONKey, "out"}},
		{"", []string{"k1", kmsv1alpha1.KeysJSONKey, "out"}},
		{kmsv1alpha1.MergePolicyReplace, []string{"out"}},
	} {
		tpls, err := parseTemplates(&kmsv1alpha1.TargetTemplate{MergePolicy: tc.policy, Data: map[string]string{"out": "x", "k1": "templated"}})
		if err != nil {
			t.Fatal(err)
		}
		c, err := renderContent(keys, tpls)
		if err != nil {
			t.Fatal(err)
		}
		want := append(tc.want, "k1")
		if got := sortedKeys(c.Data); strings.Join(got, ",") != strings.Join(sortedKeys(toSet(want)), ",") {
			t.Errorf("%q: entries %v, want %v", tc.policy, got, want)
		}
		if c.Data["k1"] != "templated" {
			t.Errorf("%q: the template did not win the clash: k1 = %q", tc.policy, c.Data["k1"])
		}
	}
}

func toSet(names []string) map[string]bool {
	out := map[string]bool{}
	for _, n := range names {
		out[n] = true
	}
	return out
}

func TestTemplateOutputIsDeterministicAtScale(t *testing.T) {
	keys := manyKeys(10_000)
	tpls, err := parseTemplates(&kmsv1alpha1.TargetTemplate{MergePolicy: kmsv1alpha1.MergePolicyReplace, Data: map[string]string{
		"first.json": `{{ first .Keys | toJson }}`,
		"ids":        `{{ range enabled .Keys }}{{ .ID }}={{ .State }}{{ "\n" }}{{ end }}`,
	}})
	if err != nil {
		t.Fatal(err)
	}
	first, err := renderContent(keys, tpls)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		again, err := renderContent(keys, tpls)
		if err != nil || again.digest() != first.digest() {
			t.Fatalf("a second rendering differs: %v", err)
		}
	}
}

// readmeRecipes reads the templates of the README's Templates section: each recipe is a
// KmsKeySelector in a yaml block that sets spec.target.template.
func readmeRecipes(t *testing.T) map[string]kmsv1alpha1.TargetTemplate {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme)[strings.Index(string(readme), "\n## Templates"):]
	section = section[:strings.Index(section[1:], "\n## ")+1]
	out := map[string]kmsv1alpha1.TargetTemplate{}
	for _, block := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(section, -1) {
		if !strings.Contains(block[1], "kind: KmsKeySelector") {
			continue
		}
		sel := &kmsv1alpha1.KmsKeySelector{}
		if err := yaml.UnmarshalStrict([]byte(block[1]), sel); err != nil {
			t.Fatalf("a README recipe does not parse: %v\n%s", err, block[1])
		}
		if sel.Spec.Target.Template != nil {
			out[sel.Name] = *sel.Spec.Target.Template
		}
	}
	return out
}

// TestReadmeRecipes renders each recipe of the README, as written, against the same keys, and
// compares every entry with testdata/templates/<selector>/<entry>. Run with -update to write them.
func TestReadmeRecipes(t *testing.T) {
	recipes := readmeRecipes(t)
	if len(recipes) != 3 {
		t.Fatalf("the README's Templates section has %d recipes, want 3", len(recipes))
	}
	var keys []kms.Key
	for _, r := range templateKeys() {
		k := kms.Key{ID: r.ID, Alias: r.Alias, Spec: r.Spec, Usage: r.Usage, Origin: r.Origin, Tags: r.Tags}
		for _, s := range []kms.State{kms.StateEnabled, kms.StateDisabled} {
			if s.String() == r.State {
				k.State = s
			}
		}
		keys = append(keys, k)
	}
	for name, recipe := range recipes {
		tpls, err := parseTemplates(&recipe)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c, err := renderContent(keys, tpls)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for entry := range recipe.Data {
			path := filepath.Join("testdata", "templates", name, entry)
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

var update = flag.Bool("update", false, "write the golden files of TestReadmeRecipes")

// BenchmarkTemplate10kKeys renders, over 10,000 keys, recipe 2's active.json limited to the IDs
// and an env file of every key, as make bench reports in docs/benchmarks.md.
func BenchmarkTemplate10kKeys(b *testing.B) {
	keys := manyKeys(10_000)
	tpls, err := parseTemplates(&kmsv1alpha1.TargetTemplate{MergePolicy: kmsv1alpha1.MergePolicyReplace, Data: map[string]string{
		"active-ids.json": `{{ enabled .Keys | ids | toJson }}`,
		"keys.env":        `{{ range .Keys }}{{ .Alias | upper | replace "-" "_" }}_KEY_ID={{ .ID }}{{ "\n" }}{{ end }}`,
	}})
	if err != nil {
		b.Fatal(err)
	}
	var size int
	for b.Loop() {
		c, err := renderContent(keys, tpls)
		if err != nil {
			b.Fatal(err)
		}
		size = c.size()
	}
	b.ReportMetric(float64(size), "configmap-bytes")
}
