package deploytest

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

// makefileVar returns the default (`NAME ?= value`) of a Makefile variable.
func makefileVar(name string) string {
	GinkgoHelper()
	data, err := os.ReadFile(filepath.Join(root, "Makefile"))
	Expect(err).NotTo(HaveOccurred())
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\s*\?=\s*(.*)$`).FindStringSubmatch(string(data))
	Expect(m).NotTo(BeNil(), "the Makefile sets no default for %s", name)
	return strings.TrimSpace(m[1])
}

// configCopy copies config/ into a temporary directory, for the edits the Makefile targets and
// docs/install.md make to it, and returns the copy's path.
func configCopy() string {
	GinkgoHelper()
	dir := filepath.Join(GinkgoT().TempDir(), "config")
	copyTree(filepath.Join(root, "config"), dir)
	return dir
}

// editFile replaces one exact occurrence of old in a file.
func editFile(path, old, new string) {
	GinkgoHelper()
	data, err := os.ReadFile(path)
	Expect(err).NotTo(HaveOccurred())
	Expect(strings.Count(string(data), old)).To(Equal(1), "%q in %s", old, path)
	Expect(os.WriteFile(path, []byte(strings.Replace(string(data), old, new, 1)), 0o644)).To(Succeed())
}

// alertsOf returns the rule groups of a PrometheusRule.
func alertsOf(u *unstructured.Unstructured) []any {
	GinkgoHelper()
	groups, found, err := unstructured.NestedSlice(u.Object, "spec", "groups")
	Expect(err).NotTo(HaveOccurred())
	Expect(found).To(BeTrue())
	return groups
}

var _ = Describe("The kustomize configuration", func() {
	Context("config/default", func() {
		var ms manifests
		BeforeEach(func() {
			ms = kustomizeBuild("config/default")
		})

		It("builds manifests the API server accepts", func() {
			dryRunApply(ms)
		})

		It("puts everything in kms-key-sync-system, prefixed kms-key-sync-", func() {
			ms.get("Namespace", releaseNamespace)
			ms.get("CustomResourceDefinition", "kmskeyselectors.kms.keysync.dev")
			for _, m := range ms {
				switch m.GetKind() {
				case "Namespace", "CustomResourceDefinition":
					continue
				case "ClusterRole", "ClusterRoleBinding":
					Expect(m.GetNamespace()).To(BeEmpty())
				default:
					Expect(m.GetNamespace()).To(Equal(releaseNamespace), "%s %s", m.GetKind(), m.GetName())
				}
				Expect(m.GetName()).To(HavePrefix("kms-key-sync-"), "%s %s", m.GetKind(), m.GetName())
			}
		})

		It("runs two hardened replicas with leader election, probes on 8081 and metrics on 8443", func() {
			d := ms.onlyDeployment()
			Expect(d.Name).To(Equal("kms-key-sync-controller-manager"))
			Expect(d.Spec.Replicas).To(HaveValue(BeEquivalentTo(2)))
			expectHardened(d)
			c := managerContainer(d)
			Expect(c.Args).To(ConsistOf("--leader-elect", "--health-probe-bind-address=:8081", "--metrics-bind-address=:8443"))
			// build-installer with the default IMG leaves config/manager/kustomization.yaml as it is.
			Expect(c.Image).To(Equal(makefileVar("IMG")))
			expectDefaultResourcesAndProbes(c)

			svc := &corev1.Service{}
			convert(ms.get("Service", "kms-key-sync-controller-manager-metrics-service"), svc)
			Expect(svc.Spec.Ports).To(HaveLen(1))
			Expect(svc.Spec.Ports[0].Name).To(Equal("https"))
			Expect(svc.Spec.Ports[0].Port).To(BeEquivalentTo(8443))
			Expect(svc.Spec.Ports[0].TargetPort).To(Equal(intstr.FromInt32(8443)))
			expectSelects(svc.Spec.Selector, d.Spec.Template.Labels)
		})

		It("binds every role to the manager's ServiceAccount", func() {
			d := ms.onlyDeployment()
			sa := ms.get("ServiceAccount", d.Spec.Template.Spec.ServiceAccountName)
			bindings := append(ms.ofKind("RoleBinding"), ms.ofKind("ClusterRoleBinding")...)
			Expect(bindings).To(HaveLen(3)) // manager, leader election, metrics auth
			for _, b := range bindings {
				rb := &rbacv1.RoleBinding{}
				convert(asRoleBinding(b), rb)
				Expect(rb.Subjects).To(Equal([]rbacv1.Subject{{Kind: "ServiceAccount", Name: sa.GetName(), Namespace: releaseNamespace}}))
				ms.get(rb.RoleRef.Kind, rb.RoleRef.Name)
			}
			Expect(testkit.Permissions(rulesOf(ms.get("ClusterRole", "kms-key-sync-manager-role")))).To(Equal(testkit.Permissions(managerRole())))
			Expect(testkit.Permissions(rulesOf(ms.get("ClusterRole", "kms-key-sync-metrics-auth-role")))).To(Equal([]string{
				"group=authentication.k8s.io resource=tokenreviews name= verb=create",
				"group=authorization.k8s.io resource=subjectaccessreviews name= verb=create",
			}))
			Expect(testkit.Permissions(rulesOf(ms.get("ClusterRole", "kms-key-sync-metrics-reader")))).To(Equal([]string{"url=/metrics verb=get"}))
			Expect(ms.get("ClusterRole", "kms-key-sync-kmskeyselector-viewer-role").GetLabels()).To(HaveKeyWithValue("rbac.authorization.k8s.io/aggregate-to-view", "true"))
			Expect(ms.get("ClusterRole", "kms-key-sync-kmskeyselector-editor-role").GetLabels()).To(HaveKeyWithValue("rbac.authorization.k8s.io/aggregate-to-edit", "true"))
		})

		It("has no wildcard rules and grants only get on secrets", func() {
			expectNoWildcardsAndSecretsGetOnly(ms)
		})
	})

	It("builds the installer with the image IMG, as `make build-installer IMG=...` does", func() {
		config := configCopy()
		const img = "registry.example.com/platform/kms-key-sync:v1.2.3"
		// The recipe of build-installer, run on the copy.
		mustRunIn(filepath.Join(config, "manager"), kustomizeBin, "edit", "set", "image", "controller="+img)
		ms := kustomizeBuild(filepath.Join(config, "default"))
		Expect(managerContainer(ms.onlyDeployment()).Image).To(Equal(img))
		dryRunApply(ms)

		// With the default IMG, build-installer leaves the committed kustomization.yaml as it is.
		mustRunIn(filepath.Join(config, "manager"), kustomizeBin, "edit", "set", "image", "controller="+makefileVar("IMG"))
		edited, err := os.ReadFile(filepath.Join(config, "manager", "kustomization.yaml"))
		Expect(err).NotTo(HaveOccurred())
		committed, err := os.ReadFile(filepath.Join(root, "config", "manager", "kustomization.yaml"))
		Expect(err).NotTo(HaveOccurred())
		Expect(string(edited)).To(Equal(string(committed)))
	})

	It("adds a ServiceMonitor and the alerts when ../prometheus is uncommented in config/default", func() {
		config := configCopy()
		editFile(filepath.Join(config, "default", "kustomization.yaml"), "\n#- ../prometheus\n", "\n- ../prometheus\n")
		ms := kustomizeBuild(filepath.Join(config, "default"))
		dryRunApply(ms)
		expectNoWildcardsAndSecretsGetOnly(ms)

		svc := ms.get("Service", "kms-key-sync-controller-manager-metrics-service")
		sm := ms.get("ServiceMonitor", "kms-key-sync-controller-manager-metrics-monitor")
		Expect(sm.GetNamespace()).To(Equal(releaseNamespace))
		selector, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
		expectSelects(selector, svc.GetLabels())
		endpoints, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
		Expect(endpoints).To(HaveLen(1))
		Expect(endpoints[0]).To(HaveKeyWithValue("port", "https"))
		Expect(endpoints[0]).To(HaveKeyWithValue("scheme", "https"))
		Expect(endpoints[0]).To(HaveKeyWithValue("bearerTokenFile", "/var/run/secrets/kubernetes.io/serviceaccount/token"))
		Expect(endpoints[0]).To(HaveKeyWithValue("honorLabels", true))
		ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
		Expect(ports).To(ContainElement(HaveKeyWithValue("name", "https")))
		Expect(ms.get("PrometheusRule", "kms-key-sync-controller-manager-alerts").GetNamespace()).To(Equal(releaseNamespace))
	})

	It("builds config/prometheus on its own into manifests the API server accepts", func() {
		ms := kustomizeBuild("config/prometheus")
		Expect(ms.ids()).To(Equal([]string{
			"PrometheusRule/system/controller-manager-alerts",
			"ServiceMonitor/system/controller-manager-metrics-monitor",
		}))
		dryRunApply(ms)
	})

	// controllers/dashboard_test.go checks the expressions' metrics against the running operator.
	It("alerts on a selector not Ready for 15 minutes, on a key pending deletion and on a stale selector", func() {
		pr := kustomizeBuild("config/prometheus").get("PrometheusRule", "controller-manager-alerts")
		type rule struct {
			Alert string `json:"alert"`
			Expr  string `json:"expr"`
			For   string `json:"for"`
		}
		var groups []struct {
			Rules []rule `json:"rules"`
		}
		data, err := yaml.Marshal(alertsOf(pr))
		Expect(err).NotTo(HaveOccurred())
		Expect(yaml.Unmarshal(data, &groups)).To(Succeed())
		var rules []rule
		for _, g := range groups {
			rules = append(rules, g.Rules...)
		}
		Expect(rules).To(ConsistOf(
			And(HaveField("Alert", "KmsKeySelectorNotReady"), HaveField("For", "15m"),
				HaveField("Expr", ContainSubstring("kms_key_sync_selector_ready")), HaveField("Expr", HaveSuffix("== 0"))),
			And(HaveField("Alert", "KmsKeyPendingDeletion"),
				HaveField("Expr", ContainSubstring(`kms_key_sync_keys{state="PendingDeletion"}`)), HaveField("Expr", HaveSuffix("> 0"))),
			And(HaveField("Alert", "KmsKeySelectorStale"),
				HaveField("Expr", ContainSubstring("> 3 * max by (namespace, selector) (kms_key_sync_selector_refresh_interval_seconds)")),
				HaveField("Expr", HaveSuffix("(kms_key_sync_selector_ready) == 0"))),
		))
	})

	It("has the same alerts in the Helm chart's PrometheusRule", func() {
		k := kustomizeBuild("config/prometheus").get("PrometheusRule", "controller-manager-alerts")
		h := helmTemplate("--set", "prometheusRule.enabled=true").get("PrometheusRule", "kms-key-sync-controller-manager-alerts")
		Expect(alertsOf(h)).To(Equal(alertsOf(k)))
	})

	It("builds config/crd into the generated CRD, as `make install` applies it", func() {
		ms := kustomizeBuild("config/crd")
		files, err := filepath.Glob(filepath.Join(root, "config", "crd", "bases", "*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		Expect(ms).To(HaveLen(len(files)))
		for _, f := range files {
			data, err := os.ReadFile(f)
			Expect(err).NotTo(HaveOccurred())
			want := &unstructured.Unstructured{}
			Expect(yaml.Unmarshal(data, &want.Object)).To(Succeed())
			Expect(ms.get("CustomResourceDefinition", want.GetName()).Object).To(Equal(want.Object))
		}
		dryRunApply(ms)
	})
})
