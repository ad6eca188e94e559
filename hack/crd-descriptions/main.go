// Command crd-descriptions rewrites the descriptions of generated CRDs for kubectl explain:
// controller-gen keeps the line breaks of Go comments, which explain shows in the middle of
// sentences, and repeats an array's item type comment after the field's own description.
// It joins the lines of each paragraph and drops the description of an array's items.
//
//	go run ./hack/crd-descriptions config/crd/bases/*.yaml
package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"
)

func main() {
	for _, path := range os.Args[1:] {
		if err := rewrite(path); err != nil {
			fmt.Fprintf(os.Stderr, "crd-descriptions: %s: %v\n", path, err)
			os.Exit(1)
		}
	}
}

func rewrite(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.UnmarshalStrict(raw, crd); err != nil {
		return err
	}
	for _, v := range crd.Spec.Versions {
		if v.Schema != nil && v.Schema.OpenAPIV3Schema != nil {
			tidy(v.Schema.OpenAPIV3Schema)
		}
	}
	out, err := yaml.Marshal(crd)
	if err != nil {
		return err
	}
	// controller-gen writes no status and no creationTimestamp; neither does this.
	out = bytes.Replace(out, []byte("  creationTimestamp: null\n"), nil, 1)
	if i := bytes.Index(out, []byte("\nstatus:\n")); i >= 0 {
		out = out[:i+1]
	}
	out = append([]byte("---\n"), out...)
	if bytes.Equal(out, raw) {
		return nil
	}
	return os.WriteFile(path, out, 0o644)
}

// unwrap joins the lines of each paragraph; an empty line, a list item ("- ") or an indented
// line starts a new one.
func unwrap(text string) string {
	lines := strings.Split(strings.TrimSpace(text), "\n")
	var b strings.Builder
	for i, line := range lines {
		switch {
		case i == 0:
		case line == "" || lines[i-1] == "" || strings.HasPrefix(line, "- ") || strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t"):
			b.WriteByte('\n')
		default:
			b.WriteByte(' ')
		}
		b.WriteString(line)
	}
	return b.String()
}

func tidy(s *apiextensionsv1.JSONSchemaProps) {
	s.Description = unwrap(s.Description)
	for name, p := range s.Properties {
		tidy(&p)
		s.Properties[name] = p
	}
	if s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil {
		tidy(s.AdditionalProperties.Schema)
	}
	if s.Items != nil && s.Items.Schema != nil {
		if s.Description != "" {
			s.Items.Schema.Description = ""
		}
		tidy(s.Items.Schema)
	}
}
