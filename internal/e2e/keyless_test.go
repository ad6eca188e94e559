package e2e

import (
	"fmt"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/iamtest"
)

var _ = Describe("Workload identity over time", func() {
	// One clock for the operator (schedule, listings, credentials' expiry), IAM and KMS: the spec
	// steps it by one refresh interval at a time, so six minutes of refreshes take seconds. The
	// API server's tokens keep the wall clock; they last ten minutes, longer than the run.
	// `make bench` scenario k runs the same soak on the wall clock, with the operator binary.
	It("keeps selectors refreshing every 10s Synced for 6 minutes on 2-minute credentials, with one exchange per credential", func() {
		const (
			selectors = 10
			interval  = 10 * time.Second
			lifetime  = 2 * time.Minute
			duration  = 6 * time.Minute
		)
		// Whole seconds, as the status stores them, so that each step makes every refresh due.
		clock := clocktesting.NewFakeClock(time.Now().Truncate(time.Second))
		keys := kmstest.GenerateKeys(5, map[string]string{"env": "prod"})
		f := newFixture(kmstest.WithKeys(keys...), kmstest.WithClock(clock.Now))
		f.DeleteSecrets()
		iam, srv, err := testkit.StartIAMWith(bg(), env.Config, []iamtest.Option{iamtest.WithClock(clock.Now)}, f.KMS)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(srv.Close)
		iam.SetCredentialLifetime(lifetime)
		f.ServiceAccount("reader", testkit.TokenAudience)
		iam.Allow(testkit.IdentityProviderID, testkit.ServiceAccountSubject(f.Namespace, "reader"), f.KMS.ProjectID())

		metricsAddr, err := testkit.FreeLoopbackAddress()
		Expect(err).NotTo(HaveOccurred())
		o, err := operatorOptions(metricsAddr, f.Namespace)
		Expect(err).NotTo(HaveOccurred())
		o.MaxConcurrentReconciles, o.Now = 4, clock.Now
		runOperator(o)

		var sels []*kmsv1alpha1.KmsKeySelector
		for i := range selectors {
			sels = append(sels, f.Create(f.Selector(fmt.Sprintf("sel-%02d", i), testkit.WithWorkloadIdentity("reader", srv.URL),
				testkit.WithTags(testkit.Tag("env", "prod")), testkit.WithRefreshInterval(interval))))
		}
		all := func(g Gomega) []kmsv1alpha1.KmsKeySelector {
			list := &kmsv1alpha1.KmsKeySelectorList{}
			g.Expect(k8sClient.List(bg(), list, client.InNamespace(f.Namespace))).To(Succeed())
			return list.Items
		}
		// syncedSince succeeds once every selector is Synced by a listing at or after t. An
		// unchanged refresh leaves the status as it was: the listing's time is in the metrics.
		scrape := testkit.Scrape("http://" + metricsAddr + "/metrics")
		syncedSince := func(t time.Time) func(Gomega) {
			return func(g Gomega) {
				for _, s := range all(g) {
					ready := meta.FindStatusCondition(s.Status.Conditions, kmsv1alpha1.ConditionReady)
					g.Expect(ready).NotTo(BeNil(), s.Name)
					g.Expect(ready.Reason).To(Equal(kmsv1alpha1.ReasonSynced), "%s: %s", s.Name, ready.Message)
				}
				listed := scrape(g).Series("kms_key_sync_selector_last_sync_timestamp_seconds", map[string]string{"namespace": f.Namespace})
				g.Expect(listed).To(HaveLen(selectors))
				g.Expect(listed).To(HaveEach(HaveField("Value", BeNumerically(">=", t.Unix()))))
			}
		}
		Eventually(syncedSince(clock.Now()), time.Minute).Should(Succeed())
		exchangesAtStart := iam.Stats().IDTokenExchanges

		By("stepping the clock through 6 minutes, from one refresh to the next")
		// The selectors share a slot. It comes at least half an interval after the first sync and
		// at most one and a half; then once an interval, so each step makes one refresh due.
		start, steps, step := clock.Now(), 0, interval*3/2
		for clock.Since(start) < duration {
			clock.Step(step)
			step = interval
			for _, s := range sels {
				Expect(testkit.Poke(bg(), k8sClient, s)).To(Succeed())
			}
			Eventually(syncedSince(clock.Now())).Should(Succeed(), "at %s", clock.Now().Format(time.TimeOnly))
			steps++
		}
		stats := iam.Stats()
		exchanges := stats.IDTokenExchanges - exchangesAtStart
		AddReportEntry("keyless expiry", fmt.Sprintf("%d selectors, %d refreshes each over %s of the injected clock: %d id-token exchanges in the window (%d before), %d securitytokens, %d refusals, %d KMS requests",
			selectors, steps, duration, exchanges, exchangesAtStart, stats.SecurityTokens, stats.Refusals, f.KMS.Stats().Total))

		// 2-minute credentials are replaced once 90s have passed: 3 to 5 exchanges cover the
		// 6-minute window, however many selectors use them and however often they refresh.
		Expect(exchanges).To(BeNumerically(">=", 3), "the credentials expired and were replaced")
		Expect(exchanges).To(BeNumerically("<=", 5))
		Expect(stats.Refusals).To(BeZero())
		Expect(f.KMS.Stats().ByStatus[403]).To(BeZero(), "KMS never saw expired credentials")
		Expect(steps).To(BeNumerically(">=", int(duration/interval)-1), "the selectors refreshed every %s", interval)
		Expect(f.FilterCalls()).To(BeNumerically(">=", steps), "every step listed KMS")
	})
})
