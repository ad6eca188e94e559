package controllers

import (
	"fmt"
	"os"
	"path/filepath"
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
	if tagKey.Pattern != kms.TagTextPattern || tagValue.Pattern != kms.TagTextPattern {
		t.Errorf("tag patterns %q and %q differ from kms.TagTextPattern %q", tagKey.Pattern, tagValue.Pattern, kms.TagTextPattern)
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
