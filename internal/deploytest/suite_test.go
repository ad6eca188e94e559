package deploytest

import (
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// The suite renders the install artefacts with the pinned tools in bin/ and has a real
// kube-apiserver (envtest) accept the output.
var (
	// root is the repository's root directory.
	root string
	// helmBin and kustomizeBin are the tools `make helm kustomize` installs.
	helmBin, kustomizeBin string
	testEnv               *envtest.Environment
	cfg                   *rest.Config
	k8sClient             client.Client
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
	root, err = filepath.Abs(filepath.Join("..", ".."))
	Expect(err).NotTo(HaveOccurred())
	Expect(filepath.Join(root, "go.mod")).To(BeAnExistingFile())

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

	testEnv = &envtest.Environment{
		// The Prometheus Operator's CRDs, so that ServiceMonitor and PrometheusRule are known.
		CRDDirectoryPaths:     []string{filepath.Join("testdata", "crds")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err = testEnv.Start()
	Expect(err).NotTo(HaveOccurred(), "starting envtest: is KUBEBUILDER_ASSETS set (make test sets it)?")
	k8sClient, err = client.New(cfg, client.Options{})
	Expect(err).NotTo(HaveOccurred())

	admin, err := testEnv.AddUser(envtest.User{Name: "deploytest-admin", Groups: []string{"system:masters"}}, nil)
	Expect(err).NotTo(HaveOccurred())
	kc, err := admin.KubeConfig()
	Expect(err).NotTo(HaveOccurred())
	kubeconfig = filepath.Join(GinkgoT().TempDir(), "kubeconfig")
	Expect(os.WriteFile(kubeconfig, kc, 0o600)).To(Succeed())
})

var _ = AfterSuite(func() {
	if testEnv != nil {
		Expect(testEnv.Stop()).To(Succeed())
	}
})
