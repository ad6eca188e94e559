package controllers_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
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

// readmeCommands returns the kubectl commands of the README: the lines of its sh blocks, joined
// where they continue, and its inline code, without comments.
func readmeCommands(path string) []string {
	GinkgoHelper()
	raw, err := os.ReadFile(path)
	Expect(err).NotTo(HaveOccurred())
	text := string(raw)
	var cmds []string
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(text, -1) {
		cmds = append(cmds, strings.Split(strings.ReplaceAll(m[1], "\\\n", " "), "\n")...)
	}
	for _, m := range regexp.MustCompile("`(kubectl [^`]+)`").FindAllStringSubmatch(text, -1) {
		cmds = append(cmds, m[1])
	}
	var out []string
	for _, c := range cmds {
		c, _, _ = strings.Cut(c, " #")
		if c = strings.TrimSpace(c); strings.HasPrefix(c, "kubectl ") {
			out = append(out, c)
		}
	}
	return out
}

// kubectlCommand is what a kubectl command line names.
type kubectlCommand struct {
	verb, namespace string
	allNamespaces   bool
	args            []string // positional arguments after the verb
	forObject       string   // kubectl events --for
}

// flagsWithValues are the kubectl flags the README uses that take a value.
var flagsWithValues = map[string]bool{"-n": true, "--namespace": true, "-f": true, "--filename": true,
	"-o": true, "--output": true, "-l": true, "--selector": true, "--for": true}

func parseKubectl(line string) kubectlCommand {
	var c kubectlCommand
	tokens := strings.Fields(line)[1:]
	for i := 0; i < len(tokens); i++ {
		t := tokens[i]
		name, value, hasValue := strings.Cut(t, "=")
		switch {
		case t == "-A" || t == "--all-namespaces":
			c.allNamespaces = true
		case strings.HasPrefix(t, "-") && flagsWithValues[name]:
			if !hasValue && i+1 < len(tokens) {
				i++
				value = tokens[i]
			}
			switch name {
			case "-n", "--namespace":
				c.namespace = value
			case "--for":
				c.forObject = value
			}
		case strings.HasPrefix(t, "-") || strings.HasPrefix(t, "<<"):
		case c.verb == "":
			c.verb = t
		default:
			c.args = append(c.args, t)
		}
	}
	return c
}

func placeholder(s string) bool { return strings.HasPrefix(s, "<") }

var _ = Describe("The README's commands", func() {
	It("name kinds the API server serves, namespaces and objects of the samples, and every CRD", func() {
		dc, err := discovery.NewDiscoveryClientForConfig(env.Config)
		Expect(err).NotTo(HaveOccurred())
		lists, err := dc.ServerPreferredResources()
		Expect(err).NotTo(HaveOccurred())
		type resource struct {
			kind       string
			namespaced bool
		}
		resources := map[string]resource{}
		for _, list := range lists {
			for _, r := range list.APIResources {
				res := resource{kind: r.Kind, namespaced: r.Namespaced}
				for _, name := range append([]string{r.Name, r.SingularName, strings.ToLower(r.Kind)}, r.ShortNames...) {
					resources[name] = res
				}
				for _, category := range r.Categories {
					resources[category] = resource{kind: "category " + category}
				}
			}
		}

		// What the samples and the README's manifests create, by kind, namespace and name.
		objects := map[string]bool{}
		namespaces := map[string]bool{}
		paths, err := filepath.Glob(filepath.Join(env.Root, "config", "samples", "*", "*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		top, err := filepath.Glob(filepath.Join(env.Root, "config", "samples", "*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		for _, path := range append(append(paths, top...), filepath.Join(env.Root, "README.md")) {
			for _, doc := range documents(path) {
				obj := &unstructured.Unstructured{}
				Expect(yaml.Unmarshal([]byte(doc), &obj.Object)).To(Succeed(), "%s", path)
				objects[obj.GetKind()+"/"+obj.GetNamespace()+"/"+obj.GetName()] = true
				namespaces[obj.GetNamespace()] = obj.GetNamespace() != ""
			}
		}
		var kustomization struct{ Namespace string }
		raw, err := os.ReadFile(filepath.Join(env.Root, "config", "default", "kustomization.yaml"))
		Expect(err).NotTo(HaveOccurred())
		Expect(yaml.Unmarshal(raw, &kustomization)).To(Succeed())
		namespaces[kustomization.Namespace] = true

		var crds []string
		bases, err := filepath.Glob(filepath.Join(env.Root, "config", "crd", "bases", "*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		for _, path := range bases {
			crd := &unstructured.Unstructured{}
			raw, err := os.ReadFile(path)
			Expect(err).NotTo(HaveOccurred())
			Expect(yaml.Unmarshal(raw, &crd.Object)).To(Succeed())
			crds = append(crds, crd.GetName())
		}
		Expect(crds).To(HaveLen(3))

		commands := readmeCommands(filepath.Join(env.Root, "README.md"))
		Expect(len(commands)).To(BeNumerically(">=", 10))
		checked := 0
		for _, line := range commands {
			c := parseKubectl(line)
			if c.namespace != "" && !placeholder(c.namespace) {
				Expect(namespaces).To(HaveKeyWithValue(c.namespace, true), "%s: no sample or manifest of the README is in namespace %q", line, c.namespace)
			}
			var targets []string // kind or kind/name
			var names []string
			switch c.verb {
			case "get", "describe", "delete", "annotate", "label", "edit", "patch":
				if len(c.args) == 0 {
					continue
				}
				targets = strings.Split(c.args[0], ",")
				names = c.args[1:]
				if c.verb == "annotate" || c.verb == "label" {
					names = names[:min(len(names), 1)] // then key=value pairs
				}
			case "explain":
				kind, _, _ := strings.Cut(c.args[0], ".")
				targets = []string{kind}
			case "create":
				if len(c.args) >= 2 && c.args[0] == "secret" {
					targets, names = []string{"secret"}, c.args[2:3]
				}
			case "events":
				if c.forObject != "" {
					targets = []string{c.forObject}
				}
			default:
				continue
			}
			for _, target := range targets {
				kind, name, hasName := strings.Cut(target, "/")
				res, ok := resources[kind]
				Expect(ok).To(BeTrue(), "%s: the API server serves no resource %q", line, kind)
				checked++
				objectNames := names
				if hasName {
					objectNames = []string{name}
				}
				if kind == "crd" || kind == "customresourcedefinitions" {
					Expect(objectNames).To(ConsistOf(crds), "%s: names other CRDs than the three installed", line)
					continue
				}
				if len(objectNames) == 0 || !res.namespaced || c.verb == "explain" {
					continue
				}
				Expect(c.namespace != "" || c.allNamespaces).To(BeTrue(), "%s: names a %s without -n", line, res.kind)
				if !strings.HasPrefix(res.kind, "Kms") && res.kind != "ClusterKmsProvider" {
					continue
				}
				for _, n := range objectNames {
					if !placeholder(n) && !placeholder(c.namespace) {
						Expect(objects).To(HaveKey(res.kind+"/"+c.namespace+"/"+n), "%s: no sample or manifest of the README is a %s %s/%s", line, res.kind, c.namespace, n)
					}
				}
			}
		}
		Expect(checked).To(BeNumerically(">=", 10))
	})
})
