package deploytest

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The commands docs/install.md gives; the test below runs them against the envtest API server.
const (
	helmInstall   = "helm install kms-key-sync charts/kms-key-sync -n kms-key-sync-system --create-namespace"
	helmUpgrade   = "helm upgrade kms-key-sync charts/kms-key-sync -n kms-key-sync-system --set kmsQps=20"
	helmUninstall = "helm uninstall kms-key-sync -n kms-key-sync-system"
)

// The kustomize commands docs/install.md gives; kustomize_test.go builds what they build.
var documentedKustomize = []string{
	"make build-installer IMG=",
	"kubectl apply -f dist/install.yaml",
	"kustomize build config/default | kubectl apply -f -",
}

// helm runs a documented helm command line against the envtest API server.
func helm(commandLine string) string {
	GinkgoHelper()
	args := strings.Fields(commandLine)
	Expect(args[0]).To(Equal("helm"))
	return mustRun(helmBin, append(args[1:], "--kubeconfig", kubeconfig)...)
}

// notesExample returns the KmsKeySelector of the NOTES.txt that helm install prints: the
// indented block from its apiVersion to the next empty line.
func notesExample(notes string) *unstructured.Unstructured {
	GinkgoHelper()
	m := regexp.MustCompile(`(?s)\n(  apiVersion: kms\.keysync\.dev/.*?)\n\n`).FindStringSubmatch(notes)
	Expect(m).NotTo(BeNil(), "no example in the notes:\n%s", notes)
	var lines []string
	for _, l := range strings.Split(m[1], "\n") {
		lines = append(lines, strings.TrimPrefix(l, "  "))
	}
	ms := decode(strings.Join(lines, "\n"))
	Expect(ms).To(HaveLen(1))
	return ms[0]
}

var _ = Describe("Installing with the documented commands", func() {
	It("installs, upgrades and uninstalls the chart with helm", func() {
		ctx := context.Background()
		scheme := runtime.NewScheme()
		Expect(appsv1.AddToScheme(scheme)).To(Succeed())
		Expect(corev1.AddToScheme(scheme)).To(Succeed())
		Expect(rbacv1.AddToScheme(scheme)).To(Succeed())
		Expect(apiextensionsv1.AddToScheme(scheme)).To(Succeed())
		c, err := client.New(env.Config, client.Options{Scheme: scheme})
		Expect(err).NotTo(HaveOccurred())
		deployment := client.ObjectKey{Namespace: releaseNamespace, Name: "kms-key-sync-controller-manager"}

		out := helm(helmInstall)
		// Should the test fail half-way, leave no release behind for the other tests.
		DeferCleanup(func() {
			_, _, _ = command(helmBin, append(strings.Fields(helmUninstall)[1:], "--ignore-not-found", "--kubeconfig", kubeconfig)...)
		})
		Expect(out).To(ContainSubstring("STATUS: deployed"))
		// NOTES.txt tells the user what to do next.
		Expect(out).To(ContainSubstring("kind: KmsKeySelector"))
		Expect(out).To(ContainSubstring("kubectl -n my-app create secret generic kms-credentials"))

		crd := &apiextensionsv1.CustomResourceDefinition{}
		Expect(c.Get(ctx, client.ObjectKey{Name: "kmskeyselectors.kms.keysync.dev"}, crd)).To(Succeed())
		Expect(crd.Status.Conditions).To(ContainElement(And(
			HaveField("Type", apiextensionsv1.Established), HaveField("Status", apiextensionsv1.ConditionTrue))))
		// The KmsKeySelector that NOTES.txt shows is valid.
		example := notesExample(out)
		Expect(example.GetKind()).To(Equal("KmsKeySelector"))
		example.SetNamespace("my-app")
		dryRunApply(manifests{example})
		d := &appsv1.Deployment{}
		Expect(c.Get(ctx, deployment, d)).To(Succeed())
		Expect(managerContainer(d).Args).To(ContainElement("--kms-qps=10"))
		Expect(c.Get(ctx, client.ObjectKey{Namespace: releaseNamespace, Name: "kms-key-sync-controller-manager"}, &corev1.ServiceAccount{})).To(Succeed())
		Expect(c.Get(ctx, client.ObjectKey{Name: "kms-key-sync-manager-rolebinding"}, &rbacv1.ClusterRoleBinding{})).To(Succeed())

		Expect(helm(helmUpgrade)).To(ContainSubstring("REVISION: 2"))
		Expect(c.Get(ctx, deployment, d)).To(Succeed())
		Expect(managerContainer(d).Args).To(ContainElement("--kms-qps=20"))
		Expect(managerContainer(d).Args).NotTo(ContainElement("--kms-qps=10"))

		helm(helmUninstall)
		Eventually(func() bool {
			return apierrors.IsNotFound(c.Get(ctx, deployment, &appsv1.Deployment{}))
		}).Should(BeTrue())
		Expect(apierrors.IsNotFound(c.Get(ctx, client.ObjectKey{Name: "kms-key-sync-manager-rolebinding"}, &rbacv1.ClusterRoleBinding{}))).To(BeTrue())
		// Helm never deletes the CRDs of crds/: the KmsKeySelectors survive an uninstall.
		Expect(c.Get(ctx, client.ObjectKey{Name: "kmskeyselectors.kms.keysync.dev"}, crd)).To(Succeed())
	})

	Describe("docs/install.md", func() {
		var doc string
		BeforeEach(func() {
			data, err := os.ReadFile(filepath.Join(root, "docs", "install.md"))
			Expect(err).NotTo(HaveOccurred())
			doc = string(data)
		})

		It("documents the commands the tests run", func() {
			for _, c := range append([]string{helmInstall, helmUpgrade, helmUninstall}, documentedKustomize...) {
				Expect(doc).To(ContainSubstring(c))
			}
		})

		It("lists every value of the chart, and only those", func() {
			row := regexp.MustCompile("(?m)^\\| `([a-zA-Z]+)[.`]")
			documented := map[string]bool{}
			for _, m := range row.FindAllStringSubmatch(doc, -1) {
				documented[m[1]] = true
			}
			values := readValues(filepath.Join(chartDir, "values.yaml"))
			for k := range values {
				Expect(documented).To(HaveKey(k), "docs/install.md does not list the value %s", k)
			}
			for k := range documented {
				Expect(values).To(HaveKey(k), "docs/install.md lists %s, which values.yaml does not have", k)
			}
		})
	})
})
