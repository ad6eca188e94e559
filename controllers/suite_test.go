package controllers_test

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
	"github.com/kms-key-sync/kms-key-sync/internal/operator"
)

// The suite runs the real operator (operator.New, as main does) against a real kube-apiserver
// and etcd, and KMS emulators over real HTTPS.
var (
	cfg       *rest.Config
	k8sClient client.Client
	testEnv   *envtest.Environment
	// kmsCalls counts every KMS request the operator makes, by operation and outcome.
	kmsCalls *kms.Counters
	// tlsCA is the certificate every TLS emulator presents; the operator trusts it.
	tlsCA []byte
	// stopManager stops the operator and waits until it has stopped.
	stopManager func()
	// metricsURL is the operator's metrics endpoint.
	metricsURL string
)

// testBackoff is the first retry delay after a failed sync; short so that tests are quick.
const testBackoff = 300 * time.Millisecond

func TestControllers(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Controller Suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	SetDefaultEventuallyTimeout(20 * time.Second)
	SetDefaultEventuallyPollingInterval(100 * time.Millisecond)
	SetDefaultConsistentlyDuration(1500 * time.Millisecond)

	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	var err error
	cfg, err = testEnv.Start()
	Expect(err).NotTo(HaveOccurred())
	k8sClient, err = client.New(cfg, client.Options{Scheme: operator.Scheme})
	Expect(err).NotTo(HaveOccurred())

	probe := kmstest.NewTLSServer()
	tlsCA = probe.CertificatePEM()
	probe.Close()
	transport, err := kms.NewTransport(tlsCA)
	Expect(err).NotTo(HaveOccurred())

	kmsCalls = &kms.Counters{}
	metricsAddr := freeAddress()
	metricsURL = "http://" + metricsAddr + "/metrics"
	mgr, err := operator.New(cfg, operator.Options{
		MetricsAddr:             metricsAddr,
		ProbeAddr:               "0",
		MaxConcurrentReconciles: 4,
		SyncTimeout:             10 * time.Second,
		Backoff:                 testBackoff,
		KMS: kms.Config{
			Transport:      http.RoundTripper(transport),
			RequestTimeout: 2 * time.Second,
			Retry:          kms.RetryPolicy{MaxAttempts: 2, BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond},
			Observer:       kmsCalls,
		},
	})
	Expect(err).NotTo(HaveOccurred())

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer GinkgoRecover()
		defer close(done)
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
	stopManager = func() {
		cancel()
		<-done
	}
})

// freeAddress returns a loopback address with a port that was free a moment ago.
func freeAddress() string {
	GinkgoHelper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	defer l.Close()
	return l.Addr().String()
}

var _ = AfterSuite(func() {
	if stopManager != nil {
		stopManager()
	}
	if testEnv != nil {
		Expect(testEnv.Stop()).To(Succeed())
	}
})
