package e2e

import (
	"fmt"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/controllers"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

var _ = Describe("A refresh that changes nothing", func() {
	// The operator and KMS share an injected clock, which the spec steps from one refresh to the
	// next; every request the operator sends the API server is counted on its way.
	It("writes nothing to the API server, and a restarted operator lists only the refreshes the checkpoint does not cover", func() {
		const interval = 10 * time.Second
		clock := clocktesting.NewFakeClock(time.Now().Truncate(time.Second))
		keys := kmstest.GenerateKeys(3, map[string]string{"env": "prod"})
		f := newFixture(kmstest.WithKeys(keys...), kmstest.WithClock(clock.Now))
		writes := &testkit.APIWrites{}
		var metricsURL string
		start := func() *testkit.RunningManager {
			GinkgoHelper()
			addr, err := testkit.FreeLoopbackAddress()
			Expect(err).NotTo(HaveOccurred())
			metricsURL = "http://" + addr + "/metrics"
			o, err := operatorOptions(addr, f.Namespace)
			Expect(err).NotTo(HaveOccurred())
			o.Now, o.ClusterResourceNamespace, o.CheckpointInterval = clock.Now, f.Namespace, 100*time.Millisecond
			return runOperatorWith(writes.Config(env.OperatorConfig), o)
		}
		sel := f.Selector("quiet", testkit.WithTags(testkit.Tag("env", "prod")), testkit.WithRefreshInterval(interval))
		selectorWrites := func() [3]int {
			return [3]int{
				writes.Under("/apis/kms.keysync.dev/v1alpha1/namespaces/" + f.Namespace + "/kmskeyselectors/quiet"),
				writes.Under("/api/v1/namespaces/" + f.Namespace + "/configmaps/quiet"),
				writes.Under("/apis/events.k8s.io/v1/namespaces/" + f.Namespace + "/events"),
			}
		}
		listedAt := func(g Gomega) float64 {
			series := testkit.Scrape(metricsURL)(g).Series("kms_key_sync_selector_last_sync_timestamp_seconds",
				map[string]string{"namespace": f.Namespace, "selector": "quiet"})
			g.Expect(series).To(HaveLen(1))
			return series[0].Value
		}
		// refresh steps the clock to the selector's next slot and waits for its listing.
		refresh := func(step time.Duration) {
			GinkgoHelper()
			clock.Step(step)
			Expect(testkit.Poke(bg(), k8sClient, sel)).To(Succeed())
			Eventually(listedAt).Should(BeNumerically(">=", clock.Now().Unix()))
		}
		checkpoint := func(g Gomega) time.Time {
			cm := &corev1.ConfigMap{}
			g.Expect(k8sClient.Get(bg(), client.ObjectKey{Namespace: f.Namespace, Name: controllers.CheckpointName}, cm)).To(Succeed())
			t, err := time.Parse(time.RFC3339Nano, cm.Data["listedThrough"])
			g.Expect(err).NotTo(HaveOccurred())
			return t
		}

		first := start()
		sel = f.Create(sel)
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Eventually(f.EventReasons(sel)).Should(ContainElement("KeysChanged"), "the first sync's event is written")
		afterFirstSync, listed := selectorWrites(), f.FilterCalls()
		Expect(afterFirstSync[0]).To(Equal(1), "a first sync answered within a second writes its status once, with no Reconciling hint before it")

		By("refreshing twice with nothing changed in KMS")
		// The slot comes half an interval to one and a half after the first sync, then once an
		// interval. The second refresh is the barrier: the first one's reconcile has ended.
		refresh(interval * 3 / 2)
		refresh(interval)
		Expect(f.FilterCalls()).To(Equal(listed+2), "each refresh listed KMS")
		Expect(selectorWrites()).To(Equal(afterFirstSync), "writes of the status, the ConfigMap and events")

		By("restarting after the checkpoint covered the last refresh")
		Eventually(checkpoint).Should(BeTemporally(">=", clock.Now()))
		Expect(first.Stop()).To(Succeed())
		second := start()
		listed = f.FilterCalls()
		Expect(testkit.Poke(bg(), k8sClient, sel)).To(Succeed())
		// Barrier: the new operator has read the checkpoint and decided, when it writes its own.
		clock.Step(time.Second)
		Eventually(checkpoint).Should(BeTemporally(">=", clock.Now()))
		Expect(f.FilterCalls()).To(Equal(listed), "KMS calls after the restart")

		By("restarting after a slot passed with no operator running")
		Expect(second.Stop()).To(Succeed())
		clock.Step(interval)
		start()
		Eventually(f.FilterCalls).Should(Equal(listed+1), "the missed refresh is listed at once")
		Eventually(listedAt).Should(BeNumerically(">=", clock.Now().Unix()))
		Expect(selectorWrites()).To(Equal(afterFirstSync))

		By("refreshing with a key's state changed in KMS")
		Expect(f.KMS.SetKeyState(keys[0].ID, kms.StateDisabled)).To(Succeed())
		refresh(interval)
		Eventually(f.States("quiet")).Should(HaveKeyWithValue(keys[0].ID, "Disabled"))
		Eventually(selectorWrites).Should(HaveEach(BeNumerically(">", 0)))
		changed := selectorWrites()
		Expect(changed[0]).To(BeNumerically(">", afterFirstSync[0]), "the status was written")
		Expect(changed[1]).To(BeNumerically(">", afterFirstSync[1]), "the ConfigMap was written")
		AddReportEntry("API writes of one selector (status, ConfigMap, events)", fmt.Sprintf(
			"first sync %v; two unchanged refreshes and two restarts [0 0 0]; a changed refresh [%d %d %d]", afterFirstSync,
			changed[0]-afterFirstSync[0], changed[1]-afterFirstSync[1], changed[2]-afterFirstSync[2]))
	})
})
