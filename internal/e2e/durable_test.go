package e2e

import (
	"fmt"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// withMetrics serves the child's metrics on a free loopback address and returns their URL.
func withMetrics(c *childConfig) string {
	GinkgoHelper()
	addr, err := testkit.FreeLoopbackAddress()
	Expect(err).NotTo(HaveOccurred())
	c.MetricsAddr = addr
	return "http://" + addr + "/metrics"
}

// reconciles returns a function that reads how many selectors an operator has reconciled.
func reconciles(metricsURL string) func(Gomega) float64 {
	return func(g Gomega) float64 {
		return testkit.Scrape(metricsURL)(g).Sum("controller_runtime_reconcile_total", map[string]string{"controller": "kmskeyselector"})
	}
}

// syncedSelectors creates n selectors with a one-hour refresh interval, each asking its own
// question so that no listing is shared, and waits until all are Synced.
func syncedSelectors(f *testkit.Fixture, n int) []*kmsv1alpha1.KmsKeySelector {
	GinkgoHelper()
	sels := make([]*kmsv1alpha1.KmsKeySelector, n)
	for i := range sels {
		sels[i] = f.Create(f.Selector(fmt.Sprintf("sel-%02d", i),
			testkit.WithTags(testkit.Tag("index", fmt.Sprint(i))), testkit.WithRefreshInterval(time.Hour)))
	}
	for _, s := range sels {
		Eventually(f.ReadyReason(s), time.Minute).Should(Equal(kmsv1alpha1.ReasonSynced))
	}
	return sels
}

func indexedKeys(n int) []kms.Key {
	keys := make([]kms.Key, n)
	for i := range keys {
		keys[i] = testkit.Key(fmt.Sprintf("%08x-0000-4000-8000-000000000000", i), fmt.Sprintf("key-%d", i), kms.StateEnabled,
			map[string]string{"index": fmt.Sprint(i)})
	}
	return keys
}

var _ = Describe("Durable reconcile state across processes", func() {
	const selectors = 50

	It("lists nothing after a restart for selectors that synced within their interval", func() {
		f := newFixture(kmstest.WithKeys(indexedKeys(selectors)...))
		first := startOperator("first", childOf(f))
		syncedSelectors(f, selectors)
		Expect(first.stop(syscall.SIGTERM)).To(BeTrue())
		listed := f.FilterCalls()

		c := childOf(f)
		metrics := withMetrics(&c)
		second := startOperator("second", c)
		// Barrier: the new process has reconciled every selector at least once.
		Eventually(reconciles(metrics), time.Minute).Should(BeNumerically(">=", selectors))
		Expect(f.FilterCalls()).To(Equal(listed), "KMS calls after the restart")
		AddReportEntry("KMS listings after a restart of 50 synced selectors", f.FilterCalls()-listed)
		Expect(second.stop(syscall.SIGTERM)).To(BeTrue())
	})

	It("lists nothing after a leader failover for selectors that synced within their interval", func() {
		f := newFixture(kmstest.WithKeys(indexedKeys(selectors)...))
		c := electingChildOf(f)
		leader := startOperator("leader", c)
		Eventually(leader.electedAt).ShouldNot(BeZero())
		standbyConfig := c
		metrics := withMetrics(&standbyConfig)
		standby := startOperator("standby", standbyConfig)
		syncedSelectors(f, selectors)
		listed := f.FilterCalls()

		Expect(leader.stop(syscall.SIGTERM)).To(BeTrue())
		Eventually(standby.electedAt, leaseDuration+2*retryPeriod+10*time.Second).ShouldNot(BeZero())
		Eventually(reconciles(metrics), time.Minute).Should(BeNumerically(">=", selectors))
		Expect(f.FilterCalls()).To(Equal(listed), "KMS calls after the failover")
		AddReportEntry("KMS listings after a failover of 50 synced selectors", f.FilterCalls()-listed)
	})

	It("lists a changed spec on the new leader when the old one was killed before writing it", func() {
		prod := testkit.Key("5a000000-0000-4000-8000-000000000001", "prod-db", kms.StateEnabled, map[string]string{"env": "prod"})
		dev := testkit.Key("5b000000-0000-4000-8000-000000000002", "dev-db", kms.StateEnabled, map[string]string{"env": "dev"})
		f := newFixture(kmstest.WithKeys(prod, dev))
		c := electingChildOf(f)
		leader := startOperator("leader", c)
		Eventually(leader.electedAt).ShouldNot(BeZero())
		standby := startOperator("standby", c)
		sel := f.Create(f.Selector("respec", testkit.WithTags(testkit.Tag("env", "prod")), testkit.WithRefreshInterval(time.Hour)))
		Eventually(f.States("respec")).Should(Equal(testkit.StatesOf(prod)))

		By("holding the leader's listing of the new spec, then killing it")
		Expect(f.KMS.InjectFault(kmstest.Fault{Kind: kmstest.FaultLatency, Action: kmstest.ActionFilter, Times: 1, Delay: time.Minute})).To(Succeed())
		Eventually(func(g Gomega) {
			cur := f.Get(sel)(g)
			testkit.WithTags(testkit.Tag("env", "dev"))(cur)
			g.Expect(k8sClient.Update(bg(), cur)).To(Succeed())
		}).Should(Succeed())
		Eventually(func() int64 { return f.KMS.Stats().FaultsApplied }).Should(Equal(int64(1)), "the leader is listing")
		Expect(leader.stop(syscall.SIGKILL)).To(BeFalse())
		Expect(f.States("respec")(Default)).To(Equal(testkit.StatesOf(prod)))

		By("letting the standby take over")
		Eventually(standby.electedAt, leaseDuration+2*retryPeriod+10*time.Second).ShouldNot(BeZero())
		Eventually(f.States("respec"), 10*time.Second).Should(Equal(testkit.StatesOf(dev)))
		Eventually(func(g Gomega) {
			cur := f.Get(sel)(g)
			g.Expect(cur.Status.ObservedGeneration).To(Equal(cur.Generation))
			g.Expect(testkit.ReadyCondition(cur).Reason).To(Equal(kmsv1alpha1.ReasonSynced))
		}).Should(Succeed())
	})
})
