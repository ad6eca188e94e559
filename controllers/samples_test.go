package controllers_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

// documents returns the YAML documents of a file, or of the yaml blocks of a Markdown file.
func documents(path string) []string {
	GinkgoHelper()
	raw, err := os.ReadFile(path)
	Expect(err).NotTo(HaveOccurred())
	text := string(raw)
	if strings.HasSuffix(path, ".md") {
		var blocks []string
		for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(text, -1) {
			blocks = append(blocks, m[1])
		}
		text = strings.Join(blocks, "\n---\n")
	}
	return strings.Split(text, "\n---\n")
}

var _ = Describe("The samples and the README's manifests", func() {
	It("are accepted by the API server as written", func() {
		namespace := testkit.Namespace("")
		namespace.GenerateName = "samples-"
		Expect(k8sClient.Create(ctx(), namespace)).To(Succeed())
		ns := namespace.Name
		paths, err := filepath.Glob(filepath.Join(env.Root, "config", "samples", "*", "*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		top, err := filepath.Glob(filepath.Join(env.Root, "config", "samples", "*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		paths = append(append(paths, top...), filepath.Join(env.Root, "README.md"))
		checked := map[string]int{}
		for _, path := range paths {
			if filepath.Base(path) == "kustomization.yaml" {
				continue
			}
			for _, doc := range documents(path) {
				obj := &unstructured.Unstructured{}
				Expect(yaml.Unmarshal([]byte(doc), &obj.Object)).To(Succeed(), "%s", path)
				if obj.GetAPIVersion() != "kms.keysync.dev/v1alpha1" && obj.GetKind() != "Secret" {
					continue
				}
				if obj.GetKind() != "ClusterKmsProvider" {
					// Each object goes to a namespace of its own test; the samples name theirs.
					obj.SetNamespace(ns)
				}
				strict := client.WithFieldValidation(k8sClient, "Strict")
				Expect(strict.Create(ctx(), obj, client.DryRunAll)).To(Succeed(), "%s: %s %s", path, obj.GetKind(), obj.GetName())
				checked[obj.GetKind()]++
			}
		}
		Expect(checked).To(HaveKeyWithValue("ClusterKmsProvider", BeNumerically(">=", 2)))
		Expect(checked).To(HaveKeyWithValue("KmsProvider", BeNumerically(">=", 1)))
		Expect(checked).To(HaveKeyWithValue("KmsKeySelector", BeNumerically(">=", 8)))
	})
})
