package e2e

import (
	"io"
	"os"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	uberzap "go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

var (
	env *testkit.Env
	// k8sClient is env's admin client.
	k8sClient client.WithWatch
	// processLog receives what this process logs outside the loggers an operator is given:
	// controller-runtime's global logger and client-go's klog. Its level is processLogLevel.
	processLog      = &testkit.Buffer{}
	processLogLevel = uberzap.NewAtomicLevelAt(zapcore.DebugLevel)
)

// TestMain runs an operator instead of the tests when the process is a child started by
// startOperator.
func TestMain(m *testing.M) {
	if raw, ok := os.LookupEnv(childEnv); ok {
		os.Exit(runChild(raw))
	}
	os.Exit(m.Run())
}

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "E2E Suite")
}

var _ = BeforeSuite(func() {
	logger := zap.New(zap.WriteTo(io.MultiWriter(GinkgoWriter, processLog)), zap.UseDevMode(true), zap.Level(processLogLevel))
	logf.SetLogger(logger)
	klog.SetLogger(logger.WithName("klog"))
	SetDefaultEventuallyTimeout(20 * time.Second)
	SetDefaultEventuallyPollingInterval(20 * time.Millisecond)

	var err error
	env, err = testkit.StartEnv(testkit.EnvOptions{})
	Expect(err).NotTo(HaveOccurred())
	k8sClient = env.Client
})

var _ = AfterSuite(func() {
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})
