package deploytest

import (
	"os"
	"path/filepath"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/kms-key-sync/kms-key-sync/controllers"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

const valuesAll = "internal/deploytest/testdata/values-all.yaml"

// chartAppVersion reads appVersion from Chart.yaml, the default image tag.
func chartAppVersion() string {
	GinkgoHelper()
	data, err := os.ReadFile(filepath.Join(root, chartDir, "Chart.yaml"))
	Expect(err).NotTo(HaveOccurred())
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	Expect(yaml.Unmarshal(data, &chart)).To(Succeed())
	Expect(chart.AppVersion).NotTo(BeEmpty())
	return chart.AppVersion
}

// readValues reads a values file of the repository.
func readValues(path string) map[string]any {
	GinkgoHelper()
	data, err := os.ReadFile(filepath.Join(root, path))
	Expect(err).NotTo(HaveOccurred())
	var v map[string]any
	Expect(yaml.Unmarshal(data, &v)).To(Succeed())
	return v
}

var _ = Describe("The Helm chart", func() {
	It("passes helm lint, also with --strict and with every value set", func() {
		for _, args := range [][]string{
			{"lint", chartDir},
			{"lint", "--strict", chartDir},
			{"lint", "--strict", chartDir, "-f", valuesAll},
		} {
			out := mustRun(helmBin, args...)
			Expect(out).To(ContainSubstring("1 chart(s) linted, 0 chart(s) failed"), "helm %v", args)
		}
	})

	It("ships a byte-identical copy of every generated CRD (make helm-crds)", func() {
		generated, err := filepath.Glob(filepath.Join(root, "config", "crd", "bases", "*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		Expect(generated).NotTo(BeEmpty())
		shipped, err := filepath.Glob(filepath.Join(root, chartDir, "crds", "*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		names := func(paths []string) []string {
			var out []string
			for _, p := range paths {
				out = append(out, filepath.Base(p))
			}
			return out
		}
		Expect(names(shipped)).To(Equal(names(generated)), "run `make helm-crds`")
		for _, g := range generated {
			want, err := os.ReadFile(g)
			Expect(err).NotTo(HaveOccurred())
			got, err := os.ReadFile(filepath.Join(root, chartDir, "crds", filepath.Base(g)))
			Expect(err).NotTo(HaveOccurred())
			Expect(string(got)).To(Equal(string(want)), "%s differs from config/crd/bases: run `make helm-crds`", filepath.Base(g))
		}
	})

	Context("with the default values", func() {
		var ms manifests
		BeforeEach(func() {
			ms = helmTemplate()
		})

		It("renders manifests the API server accepts", func() {
			dryRunApply(ms)
		})

		It("runs two hardened replicas with leader election and secure metrics", func() {
			d := ms.onlyDeployment()
			Expect(d.Name).To(Equal("kms-key-sync-controller-manager"))
			Expect(d.Namespace).To(Equal(releaseNamespace))
			Expect(d.Spec.Replicas).To(HaveValue(BeEquivalentTo(2)))
			expectHardened(d)
			c := managerContainer(d)
			Expect(c.Image).To(Equal("ghcr.io/kms-key-sync/kms-key-sync:" + chartAppVersion()))
			Expect(c.ImagePullPolicy).To(Equal(corev1.PullIfNotPresent))
			Expect(c.Args).To(ConsistOf(
				"--health-probe-bind-address=:8081",
				"--leader-elect",
				"--metrics-bind-address=:8443",
				"--metrics-secure=true",
				"--kms-qps=10",
				"--kms-burst=20",
				"--max-concurrent-reconciles=4",
				"--zap-log-level=info",
			))
			expectDefaultResourcesAndProbes(c)
			Expect(d.Spec.Template.Spec.ServiceAccountName).To(Equal("kms-key-sync-controller-manager"))
			ms.get("ServiceAccount", "kms-key-sync-controller-manager")

			svc := &corev1.Service{}
			convert(ms.get("Service", "kms-key-sync-controller-manager-metrics-service"), svc)
			Expect(svc.Spec.Ports).To(ConsistOf(HaveField("Port", BeEquivalentTo(8443))))
			Expect(svc.Spec.Ports[0].Name).To(Equal("https"))
			Expect(svc.Spec.Ports[0].TargetPort).To(Equal(intstr.FromString("https")))
			Expect(c.Ports).To(ContainElement(And(HaveField("Name", "https"), HaveField("ContainerPort", BeEquivalentTo(8443)))))
			expectSelects(svc.Spec.Selector, d.Spec.Template.Labels)
			Expect(d.Spec.Selector.MatchLabels).To(Equal(svc.Spec.Selector))

			ms.get("ClusterRoleBinding", "kms-key-sync-manager-rolebinding")
			ms.get("Role", "kms-key-sync-leader-election-role")
			ms.get("ClusterRole", "kms-key-sync-metrics-auth-role")
			ms.get("ClusterRole", "kms-key-sync-metrics-reader")
			Expect(ms.ofKind("ServiceMonitor")).To(BeEmpty())
			Expect(ms.ofKind("PrometheusRule")).To(BeEmpty())
			Expect(ms.ofKind("ConfigMap")).To(BeEmpty())
		})

		It("grants the manager exactly the rules of the generated config/rbac/role.yaml", func() {
			chart := ms.get("ClusterRole", "kms-key-sync-manager-role")
			Expect(testkit.Permissions(rulesOf(chart))).To(Equal(testkit.Permissions(managerRole())))
			Expect(testkit.Permissions(managerRole())).NotTo(BeEmpty())
		})

		It("has no wildcard rules and grants only get on secrets", func() {
			expectNoWildcardsAndSecretsGetOnly(ms)
		})

		It("creates the objects of the kustomize install, with the same names, rules and pod settings", func() {
			kms := kustomizeBuild("config/default")
			// The kustomize install also creates its namespace; helm install --create-namespace does.
			Expect(ms.ids()).To(Equal(without(kms, "Namespace").ids()))
			for _, kind := range []string{"Role", "ClusterRole"} {
				for _, k := range kms.ofKind(kind) {
					h := ms.get(kind, k.GetName())
					Expect(testkit.Permissions(rulesOf(h))).To(Equal(testkit.Permissions(rulesOf(k))), "%s %s", kind, k.GetName())
					Expect(aggregationLabels(h)).To(Equal(aggregationLabels(k)), "%s %s", kind, k.GetName())
				}
			}
			for _, kind := range []string{"RoleBinding", "ClusterRoleBinding"} {
				for _, k := range kms.ofKind(kind) {
					kb, hb := &rbacv1.RoleBinding{}, &rbacv1.RoleBinding{}
					convert(asRoleBinding(k), kb)
					convert(asRoleBinding(ms.get(kind, k.GetName())), hb)
					Expect(hb.RoleRef).To(Equal(kb.RoleRef))
					Expect(hb.Subjects).To(Equal(kb.Subjects))
				}
			}
			hd, kd := ms.onlyDeployment(), kms.onlyDeployment()
			hc, kc := managerContainer(hd), managerContainer(kd)
			// The chart spells out more flags, at their defaults.
			Expect(hc.Args).To(ContainElements(kc.Args))
			Expect(hd.Spec.Replicas).To(Equal(kd.Spec.Replicas))
			Expect(hd.Spec.Template.Spec.SecurityContext).To(Equal(kd.Spec.Template.Spec.SecurityContext))
			Expect(hc.SecurityContext).To(Equal(kc.SecurityContext))
			Expect(hc.Resources).To(Equal(kc.Resources))
			Expect(hc.Command).To(Equal(kc.Command))
			Expect(hd.Spec.Template.Spec.TerminationGracePeriodSeconds).To(Equal(kd.Spec.Template.Spec.TerminationGracePeriodSeconds))
			Expect(hd.Spec.Template.Spec.ServiceAccountName).To(Equal(kd.Spec.Template.Spec.ServiceAccountName))
		})
	})

	Context("with every value set to a non-default", func() {
		var ms manifests
		BeforeEach(func() {
			ms = helmTemplate("-f", valuesAll)
		})

		It("sets every value of values.yaml", func() {
			defaults := readValues(filepath.Join(chartDir, "values.yaml"))
			all := readValues(valuesAll)
			Expect(all).To(HaveLen(len(defaults)), "values-all.yaml and values.yaml have different keys")
			for k, v := range defaults {
				Expect(all).To(HaveKey(k))
				Expect(all[k]).NotTo(Equal(v), "values-all.yaml leaves %s at its default", k)
			}
		})

		It("renders manifests the API server accepts", func() {
			dryRunApply(ms)
		})

		It("renders each value into the manifests", func() {
			const fullname = "platform-keysync"
			d := ms.onlyDeployment()
			Expect(d.Name).To(Equal(fullname + "-controller-manager"))
			Expect(d.Labels).To(HaveKeyWithValue("app.kubernetes.io/name", "keysync"))
			Expect(d.Spec.Replicas).To(HaveValue(BeEquivalentTo(1)))
			expectHardened(d)
			pod := d.Spec.Template.Spec
			c := managerContainer(d)
			Expect(c.Image).To(Equal("registry.example.com/platform/kms-key-sync:v9.9.9-test"))
			Expect(c.ImagePullPolicy).To(Equal(corev1.PullAlways))
			Expect(pod.ImagePullSecrets).To(Equal([]corev1.LocalObjectReference{{Name: "regcred"}}))
			Expect(c.Args).To(ConsistOf(
				"--health-probe-bind-address=:8081",
				"--metrics-bind-address=:9443",
				"--metrics-secure=false",
				"--kms-qps=2.5",
				"--kms-burst=5",
				"--max-concurrent-reconciles=8",
				"--zap-log-level=debug",
				"--watch-namespaces=team-a,team-b",
				"--allow-insecure-endpoints",
				"--allowed-iam-hosts=iam.example.com,iam.*.example.com:8443",
				"--sync-timeout=5m",
				"--kms-request-timeout=20s",
				"--kms-ca-file=/etc/kms-ca/ca.crt",
			))
			Expect(c.Resources.Limits).To(HaveKeyWithValue(corev1.ResourceMemory, resource.MustParse("512Mi")))
			Expect(c.Resources.Requests).To(HaveKeyWithValue(corev1.ResourceCPU, resource.MustParse("50m")))
			Expect(pod.SecurityContext.FSGroup).To(HaveValue(BeEquivalentTo(65532)))
			Expect(c.SecurityContext.RunAsUser).To(HaveValue(BeEquivalentTo(65532)))
			Expect(c.Env).To(ContainElement(corev1.EnvVar{Name: "HTTPS_PROXY", Value: "http://proxy.example.com:3128"}))
			Expect(c.VolumeMounts).To(ContainElement(corev1.VolumeMount{Name: "kms-ca", MountPath: "/etc/kms-ca", ReadOnly: true}))
			Expect(pod.Volumes).To(ContainElement(HaveField("VolumeSource.ConfigMap.Name", "kms-ca-bundle")))
			Expect(pod.NodeSelector).To(Equal(map[string]string{"kubernetes.io/os": "linux"}))
			Expect(pod.Tolerations).To(ContainElement(HaveField("Key", "dedicated")))
			Expect(pod.Affinity).To(HaveValue(HaveField("NodeAffinity", Not(BeNil()))))
			Expect(d.Spec.Template.Annotations).To(HaveKeyWithValue("example.com/team", "platform"))
			Expect(d.Spec.Template.Labels).To(HaveKeyWithValue("example.com/tier", "control"))
			Expect(c.Ports).To(ContainElement(And(HaveField("Name", "http"), HaveField("ContainerPort", BeEquivalentTo(9443)))))

			// Leader election is off: no Role for it, only the refresh checkpoint's, as the
			// operator watches some namespaces. Metrics are plain HTTP: no auth roles.
			Expect(ms.ofKind("Role")).To(ConsistOf(HaveField("Object", HaveKeyWithValue("metadata", HaveKeyWithValue("name", fullname+"-checkpoint-role")))))
			for _, r := range ms.ofKind("ClusterRole") {
				Expect(r.GetName()).NotTo(Equal(fullname + "-metrics-auth-role"))
			}

			svc := &corev1.Service{}
			convert(ms.get("Service", fullname+"-controller-manager-metrics-service"), svc)
			Expect(svc.Spec.Ports).To(HaveLen(1))
			Expect(svc.Spec.Ports[0].Name).To(Equal("http"))
			Expect(svc.Spec.Ports[0].Port).To(BeEquivalentTo(9443))
			expectSelects(svc.Spec.Selector, d.Spec.Template.Labels)

			sm := ms.get("ServiceMonitor", fullname+"-controller-manager-metrics-monitor")
			Expect(sm.GetLabels()).To(HaveKeyWithValue("release", "prometheus"))
			endpoints, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
			Expect(endpoints).To(HaveLen(1))
			Expect(endpoints[0]).To(HaveKeyWithValue("port", "http"))
			Expect(endpoints[0]).To(HaveKeyWithValue("scheme", "http"))
			Expect(endpoints[0]).To(HaveKeyWithValue("interval", "1m"))
			Expect(endpoints[0]).NotTo(HaveKey("bearerTokenFile"))
			smSelector, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
			expectSelects(smSelector, svc.Labels)

			pr := ms.get("PrometheusRule", fullname+"-controller-manager-alerts")
			Expect(pr.GetLabels()).To(HaveKeyWithValue("release", "prometheus"))

			dashboard := ms.get("ConfigMap", fullname+"-dashboard")
			Expect(dashboard.GetNamespace()).To(Equal("monitoring"))
			Expect(dashboard.GetLabels()).To(HaveKeyWithValue("dashboards.example.com/grafana", "platform"))
			Expect(dashboard.GetLabels()).NotTo(HaveKey("grafana_dashboard"))
			Expect(dashboard.GetAnnotations()).To(Equal(map[string]string{"grafana_folder": "Platform"}))
			expectDashboard(dashboard)

			// watchNamespaces: the manager's ClusterRole is bound in those namespaces only, and
			// tokenreviews, which are cluster-scoped, cluster-wide.
			clusterBindings := ms.ofKind("ClusterRoleBinding")
			Expect(clusterBindings).To(HaveLen(1))
			crb := &rbacv1.ClusterRoleBinding{}
			convert(clusterBindings[0], crb)
			Expect(crb.Subjects).To(Equal([]rbacv1.Subject{{Kind: "ServiceAccount", Name: fullname + "-controller-manager", Namespace: releaseNamespace}}))
			Expect(testkit.Permissions(rulesOf(ms.get("ClusterRole", crb.RoleRef.Name)))).To(Equal([]string{
				"group=authentication.k8s.io resource=tokenreviews name= verb=create",
			}))
			// The refresh checkpoint, in the release namespace, which is not watched, has its own
			// Role: create, and get and patch of that one ConfigMap.
			bindings := ms.ofKind("RoleBinding")
			Expect(bindings).To(HaveLen(3))
			checkpoint := &rbacv1.RoleBinding{}
			convert(bindings[2], checkpoint)
			Expect(checkpoint.Namespace).To(Equal(releaseNamespace))
			Expect(checkpoint.RoleRef).To(Equal(rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: fullname + "-checkpoint-role"}))
			Expect(testkit.Permissions(rulesOf(ms.get("Role", fullname+"-checkpoint-role")))).To(ConsistOf(
				"group= resource=configmaps name= verb=create",
				"group= resource=configmaps name="+controllers.CheckpointName+" verb=get",
				"group= resource=configmaps name="+controllers.CheckpointName+" verb=patch",
			))
			for i, ns := range []string{"team-a", "team-b"} {
				rb := &rbacv1.RoleBinding{}
				convert(bindings[i], rb)
				Expect(rb.Namespace).To(Equal(ns))
				Expect(rb.RoleRef).To(Equal(rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: fullname + "-manager-role"}))
				Expect(rb.Subjects).To(Equal([]rbacv1.Subject{{Kind: "ServiceAccount", Name: fullname + "-controller-manager", Namespace: releaseNamespace}}))
			}
		})

		It("has no wildcard rules and grants only get on secrets", func() {
			expectNoWildcardsAndSecretsGetOnly(ms)
		})
	})

	It("serves no metrics, and creates nothing for them, with metrics.enabled=false", func() {
		ms := helmTemplate("--set", "metrics.enabled=false")
		c := managerContainer(ms.onlyDeployment())
		Expect(c.Args).To(ContainElement("--metrics-bind-address=0"))
		Expect(c.Args).NotTo(ContainElement(HavePrefix("--metrics-secure")))
		Expect(c.Ports).To(ConsistOf(HaveField("ContainerPort", BeEquivalentTo(8081))))
		Expect(ms.ofKind("Service")).To(BeEmpty())
		for _, r := range ms.ofKind("ClusterRole") {
			Expect(r.GetName()).NotTo(ContainSubstring("metrics"))
		}
		dryRunApply(ms)
	})

	It("creates a ConfigMap with the Grafana dashboard, labelled for kube-prometheus-stack's sidecar, with grafanaDashboard.enabled=true", func() {
		ms := helmTemplate("--set", "grafanaDashboard.enabled=true")
		Expect(ms.ofKind("ConfigMap")).To(HaveLen(1))
		dashboard := ms.get("ConfigMap", "kms-key-sync-dashboard")
		Expect(dashboard.GetNamespace()).To(Equal(releaseNamespace))
		Expect(dashboard.GetLabels()).To(HaveKeyWithValue("grafana_dashboard", "1"))
		Expect(dashboard.GetAnnotations()).To(BeEmpty())
		expectDashboard(dashboard)
		// Nothing else changes.
		Expect(without(ms, "ConfigMap").ids()).To(Equal(helmTemplate().ids()))
		dryRunApply(ms)
	})

	DescribeTable("refuses values that values.schema.json rejects",
		func(field string, args ...string) {
			stdout, stderr, err := command(helmBin, append([]string{"template", releaseName, chartDir, "--namespace", releaseNamespace}, args...)...)
			Expect(err).To(HaveOccurred(), "helm template accepted %v:\n%s", args, stdout)
			Expect(stderr).To(ContainSubstring("values don't meet the specifications of the schema"))
			Expect(stderr).To(ContainSubstring(field))
		},
		Entry("a string replica count", "replicaCount", "--set-string", "replicaCount=two"),
		Entry("a negative replica count", "replicaCount", "--set", "replicaCount=-1"),
		Entry("a negative kmsQps", "kmsQps", "--set", "kmsQps=-1"),
		Entry("a kmsBurst of zero", "kmsBurst", "--set", "kmsBurst=0"),
		Entry("a fractional kmsBurst", "kmsBurst", "--set", "kmsBurst=1.5"),
		Entry("a maxConcurrentReconciles of zero", "maxConcurrentReconciles", "--set", "maxConcurrentReconciles=0"),
		Entry("an unknown pull policy", "pullPolicy", "--set", "image.pullPolicy=Sometimes"),
		Entry("an unknown log level", "logLevel", "--set", "logLevel=verbose"),
		Entry("a namespace that is no DNS label", "watchNamespaces", "--set", "watchNamespaces={Team_A}"),
		Entry("a metrics port out of range", "port", "--set", "metrics.port=70000"),
		Entry("the probe port as metrics port", "port", "--set", "metrics.port=8081"),
		Entry("a string for a boolean", "secure", "--set-string", "metrics.secure=yes"),
		Entry("an extra argument that is no flag", "extraArgs", "--set", "extraArgs={sync-timeout=5m}"),
		Entry("a misspelt top-level value", "kmsQPS", "--set", "kmsQPS=5"),
		Entry("a misspelt nested value", "enable", "--set", "leaderElection.enable=false"),
		Entry("a number as dashboard label value", "labelValue", "--set", "grafanaDashboard.labelValue=1"),
		Entry("a dashboard label key with a space", "label", "--set", "grafanaDashboard.label=grafana dashboard"),
		Entry("a dashboard namespace that is no DNS label", "namespace", "--set", "grafanaDashboard.namespace=Monitoring"),
	)

	It("refuses a values file with several wrong values, naming each", func() {
		_, stderr, err := command(helmBin, "template", releaseName, chartDir, "-f", "internal/deploytest/testdata/values-bad.yaml")
		Expect(err).To(HaveOccurred())
		Expect(stderr).To(ContainSubstring("values don't meet the specifications of the schema"))
		Expect(stderr).To(ContainSubstring("replicaCount"))
		Expect(stderr).To(ContainSubstring("kmsQps"))
	})

	It("refuses several replicas without leader election", func() {
		_, stderr, err := command(helmBin, "template", releaseName, chartDir, "--set", "leaderElection.enabled=false")
		Expect(err).To(HaveOccurred())
		Expect(stderr).To(ContainSubstring("replicaCount > 1 requires leaderElection.enabled"))
	})

	It("refuses a ServiceMonitor without metrics", func() {
		_, stderr, err := command(helmBin, "template", releaseName, chartDir, "--set", "metrics.enabled=false,serviceMonitor.enabled=true")
		Expect(err).To(HaveOccurred())
		Expect(stderr).To(ContainSubstring("serviceMonitor.enabled requires metrics.enabled"))
	})

	It("refuses a Grafana dashboard without metrics", func() {
		_, stderr, err := command(helmBin, "template", releaseName, chartDir, "--set", "metrics.enabled=false,grafanaDashboard.enabled=true")
		Expect(err).To(HaveOccurred())
		Expect(stderr).To(ContainSubstring("grafanaDashboard.enabled requires metrics.enabled"))
	})
})

// expectDashboard checks that a ConfigMap holds the chart's dashboard, unchanged, as JSON.
func expectDashboard(cm *unstructured.Unstructured) {
	GinkgoHelper()
	want, err := os.ReadFile(filepath.Join(root, chartDir, "dashboards", "kms-key-sync.json"))
	Expect(err).NotTo(HaveOccurred())
	data, _, _ := unstructured.NestedStringMap(cm.Object, "data")
	Expect(data).To(HaveLen(1))
	Expect(data).To(HaveKey("kms-key-sync.json"))
	Expect(data["kms-key-sync.json"]).To(MatchJSON(want))
}

// expectSelects checks that a selector is not empty and matches the labels.
func expectSelects(selector, labels map[string]string) {
	GinkgoHelper()
	Expect(selector).NotTo(BeEmpty())
	for k, v := range selector {
		Expect(labels).To(HaveKeyWithValue(k, v), "the selector %v does not match the labels %v", selector, labels)
	}
}

// without returns the objects that are not of a kind.
func without(ms manifests, kind string) manifests {
	var out manifests
	for _, m := range ms {
		if m.GetKind() != kind {
			out = append(out, m)
		}
	}
	return out
}

// aggregationLabels returns the aggregate-to-* labels of a role.
func aggregationLabels(u *unstructured.Unstructured) map[string]string {
	out := map[string]string{}
	for k, v := range u.GetLabels() {
		if strings.HasPrefix(k, "rbac.authorization.k8s.io/aggregate-to-") {
			out[k] = v
		}
	}
	return out
}

// asRoleBinding returns a (Cluster)RoleBinding as a RoleBinding, whose fields are the same.
func asRoleBinding(u *unstructured.Unstructured) *unstructured.Unstructured {
	u = u.DeepCopy()
	u.SetKind("RoleBinding")
	return u
}
