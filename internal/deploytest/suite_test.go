package deploytest

import (
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

// The suite renders the install artefacts with the pinned tools in bin/ and has a real
// kube-apiserver (envtest) accept the output.
var (
	// root is the repository's root directory.
	root string
	// helmBin and kustomizeBin are the tools `make helm kustomize` installs.
	helmBin, kustomizeBin string
	env                   *testkit.Env
	// k8sClient is env's admin client.
	k8sClient client.Client
	// kubeconfig is a file with admin credentials for the envtest API server, for helm.
	kubeconfig string
)

func TestDeploy(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Deploy Suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))

	var err error
	root, err = testkit.RepoRoot()
	Expect(err).NotTo(HaveOccurred())
	helmBin = filepath.Join(root, "bin", "helm")
	kustomizeBin = filepath.Join(root, "bin", "kustomize")
	for _, bin := range []string{helmBin, kustomizeBin} {
		_, err := os.Stat(bin)
		Expect(err).NotTo(HaveOccurred(),
			"%s is missing: run `make helm kustomize` (or `make test`, which installs them) first", bin)
	}

	// Keep helm's cache, config and data out of the user's home.
	helmHome := GinkgoT().TempDir()
	for _, v := range []string{"HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"} {
		GinkgoT().Setenv(v, filepath.Join(helmHome, v))
	}

	env, err = testkit.StartEnv(testkit.EnvOptions{
		Root: root,
		// Helm and kustomize install the operator's CRDs themselves, as the tests check. The
		// Prometheus Operator's CRDs make ServiceMonitor and PrometheusRule known.
		CRDDirectories: []string{filepath.Join("internal", "deploytest", "testdata", "crds")},
	})
	Expect(err).NotTo(HaveOccurred())
	k8sClient = env.Client
	kubeconfig = filepath.Join(GinkgoT().TempDir(), "kubeconfig")
	Expect(os.WriteFile(kubeconfig, env.AdminKubeconfig(), 0o600)).To(Succeed())
})

var _ = AfterSuite(func() {
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})
