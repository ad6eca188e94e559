package controllers_test

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/operator"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/iamtest"
)

// The suite runs the real operator (operator.New, as main does) in this process, authenticated as
// its own user with only the generated RBAC, against a real kube-apiserver and etcd, and KMS
// emulators over real HTTPS.
var (
	env *testkit.Env
	// k8sClient is env's admin client.
	k8sClient client.Client
	// kmsCalls counts every KMS request the operator makes, by operation and outcome.
	kmsCalls *kms.Counters
	// operatorManager is the operator, running.
	operatorManager *testkit.RunningManager
	// metricsURL is the operator's metrics endpoint.
	metricsURL string

	// agencyIAM serves the operator's node agency (its --metadata-endpoint) and, over plain
	// http, its pod identity.
	agencyIAM *iamtest.IAM
	// podIdentityTokenFile is the operator's HC_CONTAINER_AUTHORIZATION_TOKEN_FILE.
	podIdentityTokenFile string
)

// apiAudiences are the suite's API server's audiences, as k3s sets them.
var apiAudiences = []string{"https://kubernetes.default.svc.cluster.local", "k3s"}

// clusterResourceNamespace holds the Secrets of ClusterKmsProviders that name no namespace.
const clusterResourceNamespace = "kms-key-sync-system"

// testBackoff is the first retry delay after a failed sync; short so that tests are quick.
const testBackoff = 300 * time.Millisecond

// The defaults of Eventually: long enough for a backoff retry and a loaded machine, and a
// polling interval short next to the operator's reactions.
const (
	eventuallyTimeout = 20 * time.Second
	eventuallyPolling = 20 * time.Millisecond
)

// coalesceWindow is how long a listing answers the same question for other selectors; short, so
// that a refresh that a spec brings forward (refreshListing) lists KMS anew soon after a sync.
const coalesceWindow = 2 * time.Second

func TestControllers(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Controller Suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	SetDefaultEventuallyTimeout(eventuallyTimeout)
	SetDefaultEventuallyPollingInterval(eventuallyPolling)

	var err error
	// The API server accepts the audiences k3s gives it: a token for one of them must never
	// leave the cluster, though no fixed list of the operator's names them.
	env, err = testkit.StartEnv(testkit.EnvOptions{APIAudiences: apiAudiences})
	Expect(err).NotTo(HaveOccurred())
	k8sClient = env.Client

	transport, err := testkit.EmulatorTransport()
	Expect(err).NotTo(HaveOccurred())
	kmsCalls = &kms.Counters{}
	metricsAddr, err := testkit.FreeLoopbackAddress()
	Expect(err).NotTo(HaveOccurred())
	metricsURL = "http://" + metricsAddr + "/metrics"
	Expect(k8sClient.Create(ctx(), testkit.Namespace(clusterResourceNamespace))).To(Succeed())

	agencyIAM = iamtest.New()
	// The metadata service is plain http, as on ECS. So is the pod identity endpoint here,
	// which the operator must refuse: it runs without --allow-insecure-endpoints.
	metadata := httptest.NewServer(agencyIAM.Handler())
	DeferCleanup(metadata.Close)
	podIdentityTokenFile = filepath.Join(GinkgoT().TempDir(), "pod-identity-token")
	mgr, err := operator.New(env.OperatorConfig, operator.Options{
		ClusterResourceNamespace: clusterResourceNamespace,
		MetricsAddr:              metricsAddr,
		ProbeAddr:                "0",
		MaxConcurrentReconciles:  4,
		SyncTimeout:              10 * time.Second,
		Backoff:                  testBackoff,
		CoalesceWindow:           coalesceWindow,
		AllowedIAMHosts:          testkit.EmulatorIAMHosts,
		MetadataEndpoint:         metadata.URL,
		PodIdentityURI:           metadata.URL + iamtest.PathPodIdentity,
		PodIdentityTokenFile:     podIdentityTokenFile,
		KMS: kms.Config{
			Transport:      http.RoundTripper(transport),
			RequestTimeout: 2 * time.Second,
			Retry:          kms.RetryPolicy{MaxAttempts: 2, BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond},
			Observer:       kmsCalls,
		},
	})
	Expect(err).NotTo(HaveOccurred())
	operatorManager = testkit.StartManager(mgr)
})

var _ = AfterSuite(func() {
	if operatorManager != nil {
		Expect(operatorManager.Stop()).To(Succeed())
	}
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})
