package controllers

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/render"
)

// selectorSpecSchema is the schema of a KmsKeySelector's spec in the generated CRD.
func selectorSpecSchema(t *testing.T) apiextensionsv1.JSONSchemaProps {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "config", "crd", "bases", "kms.keysync.dev_kmskeyselectors.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.Unmarshal(raw, crd); err != nil {
		t.Fatal(err)
	}
	return crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"]
}

// TestSchemaFollowsKMSRules keeps the CRD markers in step with internal/kms/rules.go, where the
// API's limits are defined once.
func TestSchemaFollowsKMSRules(t *testing.T) {
	spec := selectorSpecSchema(t)
	tags := spec.Properties["tags"]
	tagKey := tags.Items.Schema.Properties["key"]
	tagValue := tags.Items.Schema.Properties["values"].Items.Schema
	match := spec.Properties["matches"].Items.Schema.Properties["value"]
	page := spec.Properties["pageSize"]

	checks := []struct {
		name      string
		got, want int64
	}{
		{"tags maxItems", *tags.MaxItems, kms.MaxTags},
		{"tag key maxLength", *tagKey.MaxLength, kms.MaxTagKeyLength},
		{"tag value maxLength", *tagValue.MaxLength, kms.MaxTagValueLength},
		{"match value maxLength", *match.MaxLength, kms.MaxMatchValueLength},
		{"pageSize maximum", int64(*page.Maximum), kms.MaxPageSize},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d in the CRD, %d in internal/kms/rules.go", c.name, c.got, c.want)
		}
	}
	// The CEL rule quotes the pattern in a CEL string, where a backslash is doubled.
	rule := "!self.matches('" + strings.ReplaceAll(kms.ForbiddenTagCharPattern, `\`, `\\`) + "')"
	for name, s := range map[string]apiextensionsv1.JSONSchemaProps{"tag key": tagKey, "tag value": *tagValue} {
		if len(s.XValidations) != 1 || s.XValidations[0].Rule != rule || s.Pattern != "" {
			t.Errorf("%s: rules %v, pattern %q; want only the rule %s, from kms.ForbiddenTagCharPattern", name, s.XValidations, s.Pattern, rule)
		}
	}
	enum := spec.Properties["matches"].Items.Schema.Properties["key"].Enum
	if len(enum) != 1 || string(enum[0].Raw) != `"`+string(kms.MatchResourceName)+`"` {
		t.Errorf("match key enum = %v, want only %q", enum, kms.MatchResourceName)
	}
}

// TestSchemaFollowsTheExpressionLimit keeps the CRD's rule on spec.target.data in step with
// render.MaxExpressionLength, which the operator enforces again.
func TestSchemaFollowsTheExpressionLimit(t *testing.T) {
	data := selectorSpecSchema(t).Properties["target"].Properties["data"]
	want := fmt.Sprintf("self.all(k, self[k].size() <= %d)", render.MaxExpressionLength)
	for _, rule := range data.XValidations {
		if rule.Rule == want {
			return
		}
	}
	t.Errorf("spec.target.data has no rule %q: %v", want, data.XValidations)
}

// TestCRDDescriptionsReadWell keeps kubectl explain readable: whole sentences, no description
// twice, and the default of every field that has one.
func TestCRDDescriptionsReadWell(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("..", "config", "crd", "bases", "*.yaml"))
	if err != nil || len(paths) != 3 {
		t.Fatalf("CRDs: %v, %v", paths, err)
	}
	brokenSentence := regexp.MustCompile(`\n[a-z(]`)
	for _, path := range paths {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.Unmarshal(raw, crd); err != nil {
			t.Fatal(err)
		}
		var walk func(field string, s apiextensionsv1.JSONSchemaProps)
		walk = func(field string, s apiextensionsv1.JSONSchemaProps) {
			if brokenSentence.MatchString(s.Description) {
				t.Errorf("%s: %s: the description breaks a sentence: %q", crd.Name, field, s.Description)
			}
			if s.Default != nil && s.Type != "object" && !strings.Contains(s.Description, "default") {
				t.Errorf("%s: %s: the description does not give the default %s", crd.Name, field, s.Default.Raw)
			}
			for name, p := range s.Properties {
				walk(field+"."+name, p)
			}
			if s.Items != nil && s.Items.Schema != nil {
				if s.Description != "" && s.Items.Schema.Description != "" {
					t.Errorf("%s: %s: kubectl explain shows the items' description after the field's", crd.Name, field)
				}
				walk(field+"[]", *s.Items.Schema)
			}
		}
		walk(crd.Spec.Names.Kind, *crd.Spec.Versions[0].Schema.OpenAPIV3Schema)
	}
}
