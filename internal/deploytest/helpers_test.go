package deploytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

// The install commands docs/install.md documents; the tests run exactly these (see install_test.go).
const (
	releaseName      = "kms-key-sync"
	releaseNamespace = "kms-key-sync-system"
	chartDir         = "charts/kms-key-sync"
)

// manifests are the objects of a rendered multi-document YAML stream, in order.
type manifests []*unstructured.Unstructured

// command runs a tool in the repository's root and returns its stdout and stderr.
func command(name string, args ...string) (string, string, error) {
	return commandIn(root, name, args...)
}

// commandIn runs a tool in a directory and returns its stdout and stderr.
func commandIn(dir, name string, args ...string) (string, string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// mustRun runs a tool that must succeed in the repository's root and returns its stdout.
func mustRun(name string, args ...string) string {
	GinkgoHelper()
	return mustRunIn(root, name, args...)
}

// mustRunIn runs a tool that must succeed in a directory and returns its stdout.
func mustRunIn(dir, name string, args ...string) string {
	GinkgoHelper()
	stdout, stderr, err := commandIn(dir, name, args...)
	Expect(err).NotTo(HaveOccurred(), "%s %s\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), stdout, stderr)
	return stdout
}

// helmTemplate renders the chart as the documented `helm install` would install it, CRDs included.
func helmTemplate(args ...string) manifests {
	GinkgoHelper()
	base := []string{"template", releaseName, chartDir, "--namespace", releaseNamespace, "--include-crds"}
	return decode(mustRun(helmBin, append(base, args...)...))
}

// kustomizeBuild runs `kustomize build dir`; dir is relative to the root, or absolute.
func kustomizeBuild(dir string) manifests {
	GinkgoHelper()
	return decode(mustRun(kustomizeBin, "build", dir))
}

// decode splits a multi-document YAML stream into objects, dropping empty documents.
func decode(stream string) manifests {
	GinkgoHelper()
	var out manifests
	d := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(stream), 4096)
	for {
		var m map[string]any
		err := d.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		Expect(err).NotTo(HaveOccurred())
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		Expect(u.GetKind()).NotTo(BeEmpty(), "a document without kind in:\n%s", stream)
		out = append(out, u)
	}
	Expect(out).NotTo(BeEmpty(), "no objects rendered")
	return out
}

// ofKind returns the objects of a kind.
func (ms manifests) ofKind(kind string) manifests {
	var out manifests
	for _, m := range ms {
		if m.GetKind() == kind {
			out = append(out, m)
		}
	}
	return out
}

// get returns the one object of a kind and name, failing if there is not exactly one.
func (ms manifests) get(kind, name string) *unstructured.Unstructured {
	GinkgoHelper()
	var found []*unstructured.Unstructured
	for _, m := range ms.ofKind(kind) {
		if m.GetName() == name {
			found = append(found, m)
		}
	}
	Expect(found).To(HaveLen(1), "want exactly one %s %q; have %v", kind, name, ms.ids())
	return found[0]
}

// ids lists kind/namespace/name of every object, sorted, for messages and comparisons.
func (ms manifests) ids() []string {
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, fmt.Sprintf("%s/%s/%s", m.GetKind(), m.GetNamespace(), m.GetName()))
	}
	sort.Strings(out)
	return out
}

// onlyDeployment returns the one Deployment, typed.
func (ms manifests) onlyDeployment() *appsv1.Deployment {
	GinkgoHelper()
	deps := ms.ofKind("Deployment")
	Expect(deps).To(HaveLen(1), "want one Deployment; have %v", ms.ids())
	d := &appsv1.Deployment{}
	convert(deps[0], d)
	return d
}

// convert turns an unstructured object into a typed one, rejecting unknown fields.
func convert(u *unstructured.Unstructured, into any) {
	GinkgoHelper()
	Expect(runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, into, true)).
		To(Succeed(), "%s %s", u.GetKind(), u.GetName())
}

// rulesOf returns the rules of a Role or ClusterRole.
func rulesOf(u *unstructured.Unstructured) []rbacv1.PolicyRule {
	GinkgoHelper()
	Expect(u.GetKind()).To(BeElementOf("Role", "ClusterRole"))
	r := &rbacv1.ClusterRole{}
	u = u.DeepCopy()
	u.SetKind("ClusterRole")
	convert(u, r)
	return r.Rules
}

// managerRole returns the rules of the generated config/rbac/role.yaml.
func managerRole() []rbacv1.PolicyRule {
	GinkgoHelper()
	role, err := testkit.ReadRole(filepath.Join(root, testkit.ManagerRoleFile))
	Expect(err).NotTo(HaveOccurred())
	return role.Rules
}

// dryRunApply creates the namespaces the objects live in for real, then server-side applies
// every object with dryRun=All, so that the API server validates and admits each one without
// storing it. It fails on the first object the API server rejects.
func dryRunApply(ms manifests) {
	GinkgoHelper()
	ctx := context.Background()
	namespaces := map[string]bool{}
	for _, m := range ms {
		if m.GetKind() == "Namespace" {
			namespaces[m.GetName()] = true
		}
		if ns := m.GetNamespace(); ns != "" {
			namespaces[ns] = true
		}
	}
	for ns := range namespaces {
		ensureNamespace(ns)
	}
	for _, m := range ms {
		err := k8sClient.Apply(ctx, client.ApplyConfigurationFromUnstructured(m.DeepCopy()),
			client.FieldOwner("deploytest"), client.ForceOwnership, client.DryRunAll)
		Expect(err).NotTo(HaveOccurred(), "the API server rejected %s %s/%s", m.GetKind(), m.GetNamespace(), m.GetName())
	}
}

// ensureNamespace creates a namespace unless it exists.
func ensureNamespace(name string) {
	GinkgoHelper()
	err := k8sClient.Create(context.Background(), testkit.Namespace(name))
	if !apierrors.IsAlreadyExists(err) {
		Expect(err).NotTo(HaveOccurred())
	}
}

// copyTree copies a directory tree, for editing a copy of config/ as the Makefile targets do.
func copyTree(src, dst string) {
	GinkgoHelper()
	Expect(filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})).To(Succeed())
}

// managerContainer returns the Deployment's only container, the manager.
func managerContainer(d *appsv1.Deployment) corev1.Container {
	GinkgoHelper()
	Expect(d.Spec.Template.Spec.Containers).To(HaveLen(1))
	c := d.Spec.Template.Spec.Containers[0]
	Expect(c.Name).To(Equal("manager"))
	return c
}

// expectHardened checks the security settings every rendering of the Deployment must keep.
func expectHardened(d *appsv1.Deployment) {
	GinkgoHelper()
	pod := d.Spec.Template.Spec
	Expect(pod.SecurityContext).NotTo(BeNil())
	Expect(pod.SecurityContext.RunAsNonRoot).To(HaveValue(BeTrue()))
	Expect(pod.SecurityContext.SeccompProfile).To(HaveValue(HaveField("Type", corev1.SeccompProfileTypeRuntimeDefault)))
	c := managerContainer(d)
	Expect(c.SecurityContext).NotTo(BeNil())
	sc := c.SecurityContext
	Expect(sc.RunAsNonRoot).To(HaveValue(BeTrue()))
	Expect(sc.ReadOnlyRootFilesystem).To(HaveValue(BeTrue()))
	Expect(sc.AllowPrivilegeEscalation).To(HaveValue(BeFalse()))
	Expect(sc.Capabilities).NotTo(BeNil())
	Expect(sc.Capabilities.Drop).To(ConsistOf(corev1.Capability("ALL")))
	Expect(sc.Capabilities.Add).To(BeEmpty())
	Expect(sc.SeccompProfile).To(HaveValue(HaveField("Type", corev1.SeccompProfileTypeRuntimeDefault)))
	Expect(c.Command).To(Equal([]string{"/manager"}))
	Expect(c.LivenessProbe).NotTo(BeNil())
	Expect(c.LivenessProbe.HTTPGet).To(HaveValue(HaveField("Path", "/healthz")))
	Expect(c.ReadinessProbe).NotTo(BeNil())
	Expect(c.ReadinessProbe.HTTPGet).To(HaveValue(HaveField("Path", "/readyz")))
	Expect(c.Resources.Requests).NotTo(BeEmpty())
	Expect(c.Resources.Limits).NotTo(BeEmpty())
	Expect(pod.TerminationGracePeriodSeconds).NotTo(BeNil())
	Expect(pod.ServiceAccountName).NotTo(BeEmpty())
}

// expectDefaultResourcesAndProbes checks the resources and the probe port that the chart's
// default values and config/manager give the manager alike.
func expectDefaultResourcesAndProbes(c corev1.Container) {
	GinkgoHelper()
	Expect(c.Resources.Requests).To(Equal(corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("64Mi"),
	}))
	Expect(c.Resources.Limits).To(Equal(corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("256Mi"),
	}))
	Expect(probePort(c, c.LivenessProbe)).To(BeEquivalentTo(8081))
	Expect(probePort(c, c.ReadinessProbe)).To(BeEquivalentTo(8081))
}

// probePort resolves a probe's port (a number or a container port's name) to a number.
func probePort(c corev1.Container, p *corev1.Probe) int32 {
	GinkgoHelper()
	Expect(p).NotTo(BeNil())
	Expect(p.HTTPGet).NotTo(BeNil())
	port := p.HTTPGet.Port
	if port.IntValue() != 0 {
		return int32(port.IntValue())
	}
	for _, cp := range c.Ports {
		if cp.Name == port.String() {
			return cp.ContainerPort
		}
	}
	Fail(fmt.Sprintf("probe port %q is not a container port", port.String()))
	return 0
}

// expectNoWildcardsAndSecretsGetOnly checks every Role and ClusterRole: no '*' in any field of
// any rule, and any rule that names secrets grants get only.
func expectNoWildcardsAndSecretsGetOnly(ms manifests) {
	GinkgoHelper()
	roles := append(ms.ofKind("Role"), ms.ofKind("ClusterRole")...)
	Expect(roles).NotTo(BeEmpty())
	for _, role := range roles {
		for _, r := range rulesOf(role) {
			for _, field := range [][]string{r.APIGroups, r.Resources, r.Verbs, r.ResourceNames, r.NonResourceURLs} {
				for _, v := range field {
					Expect(v).NotTo(ContainSubstring("*"), "%s %s has a wildcard rule %+v", role.GetKind(), role.GetName(), r)
				}
			}
			for _, res := range r.Resources {
				if res == "secrets" || strings.HasPrefix(res, "secrets/") {
					Expect(r.Verbs).To(Equal([]string{"get"}), "%s %s grants %v on secrets", role.GetKind(), role.GetName(), r.Verbs)
				}
			}
		}
	}
}
