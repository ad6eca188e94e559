package e2e

import (
	"context"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/rest"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/operator"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

func bg() context.Context { return context.Background() }

// newFixture returns a fixture of the suite's API server whose emulator stops when the spec ends.
func newFixture(opts ...kmstest.Option) *testkit.Fixture {
	GinkgoHelper()
	f := testkit.NewFixture(Default, k8sClient, "e2e", opts...)
	DeferCleanup(f.Close)
	return f
}

// operatorOptions returns testkit.OperatorOptions for an operator of the namespaces only, so
// that operators of other specs never meet.
func operatorOptions(metricsAddr string, namespaces ...string) (operator.Options, error) {
	o, err := testkit.OperatorOptions(metricsAddr)
	o.WatchNamespaces = namespaces
	o.MaxConcurrentReconciles = 2
	o.SyncTimeout = 30 * time.Second
	return o, err
}

// runOperator runs the operator in this process, as the operator's user, until the spec ends or
// it is stopped.
func runOperator(o operator.Options) *testkit.RunningManager {
	GinkgoHelper()
	return runOperatorWith(env.OperatorConfig, o)
}

// runOperatorWith is runOperator with the operator's client configuration cfg.
func runOperatorWith(cfg *rest.Config, o operator.Options) *testkit.RunningManager {
	GinkgoHelper()
	// Every spec that runs an operator here registers the controller's name again.
	o.SkipNameValidation = true
	mgr, err := operator.New(cfg, o)
	Expect(err).NotTo(HaveOccurred())
	m := testkit.StartManager(mgr)
	DeferCleanup(m.Stop)
	return m
}

// synced returns a function that succeeds once the operator has handled the selector's current
// generation and force-sync value, and synced it.
func synced(f *testkit.Fixture, sel *kmsv1alpha1.KmsKeySelector) func(Gomega) {
	return func(g Gomega) {
		f.Handled(sel)(g)
		g.Expect(f.ReadyReason(sel)(g)).To(Equal(kmsv1alpha1.ReasonSynced))
	}
}

// failures returns a function that reads the selector's status.consecutiveFailures.
func failures(f *testkit.Fixture, sel *kmsv1alpha1.KmsKeySelector) func(Gomega) int32 {
	return func(g Gomega) int32 { return f.Get(sel)(g).Status.ConsecutiveFailures }
}

// readyMessage returns the message of the selector's Ready condition.
func readyMessage(f *testkit.Fixture, sel *kmsv1alpha1.KmsKeySelector) string {
	GinkgoHelper()
	c := f.ReadyCondition(sel)(Default)
	Expect(c).NotTo(BeNil())
	return c.Message
}
