package e2e

import (
	"fmt"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

var _ = Describe("Workload identity over time", func() {
	// Real time: the credentials, the API server's tokens and the refreshes all run on the wall
	// clock, as they do in a cluster.
	It("keeps 100 selectors refreshing every 10s Synced for 6 minutes on 2-minute credentials, with one exchange per credential", func() {
		const (
			selectors = 100
			lifetime  = 2 * time.Minute
			duration  = 6 * time.Minute
		)
		keys := kmstest.GenerateKeys(5, map[string]string{"env": "prod"})
		f := newFixture(kmstest.WithKeys(keys...))
		f.DeleteSecrets()
		iam, srv, err := testkit.StartIAM(bg(), env.Config, f.KMS)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(srv.Close)
		iam.SetCredentialLifetime(lifetime)
		f.ServiceAccount("reader", testkit.TokenAudience)
		iam.Allow(testkit.IdentityProviderID, testkit.ServiceAccountSubject(f.Namespace, "reader"), f.KMS.ProjectID())

		o, err := operatorOptions("0", f.Namespace)
		Expect(err).NotTo(HaveOccurred())
		o.MaxConcurrentReconciles = 4
		runOperator(o)

		for i := range selectors {
			f.Create(f.Selector(fmt.Sprintf("sel-%03d", i), testkit.WithWorkloadIdentity("reader", srv.URL),
				testkit.WithTags(testkit.Tag("env", "prod")), testkit.WithRefreshInterval(10*time.Second)))
		}
		all := func(g Gomega) []kmsv1alpha1.KmsKeySelector {
			list := &kmsv1alpha1.KmsKeySelectorList{}
			g.Expect(k8sClient.List(bg(), list, client.InNamespace(f.Namespace))).To(Succeed())
			return list.Items
		}
		Eventually(func(g Gomega) {
			for _, s := range all(g) {
				g.Expect(meta.IsStatusConditionTrue(s.Status.Conditions, kmsv1alpha1.ConditionReady)).To(BeTrue(), s.Name)
			}
		}, time.Minute).Should(Succeed())
		start := time.Now()
		exchangesAtStart := iam.Stats().IDTokenExchanges

		By("watching every selector for 6 minutes")
		refreshes := map[string]int{}
		lastSync := map[string]time.Time{}
		var notSynced []string
		for time.Since(start) < duration {
			for _, s := range all(Default) {
				ready := meta.FindStatusCondition(s.Status.Conditions, kmsv1alpha1.ConditionReady)
				if ready == nil || ready.Reason != kmsv1alpha1.ReasonSynced || s.Status.ConsecutiveFailures > 0 {
					notSynced = append(notSynced, fmt.Sprintf("%s at %s: %v", s.Name, time.Since(start).Round(time.Second), ready))
				}
				if at := s.Status.LastSyncTime; at != nil && at.After(lastSync[s.Name]) {
					if !lastSync[s.Name].IsZero() {
						refreshes[s.Name]++
					}
					lastSync[s.Name] = at.Time
				}
			}
			time.Sleep(time.Second)
		}
		stats := iam.Stats()
		exchanges := stats.IDTokenExchanges
		total := 0
		for _, n := range refreshes {
			total += n
		}
		AddReportEntry("keyless expiry", fmt.Sprintf("%d selectors, %s: %d refreshes, %d id-token exchanges (%d before the window), %d securitytokens, %d refusals, %d KMS requests",
			selectors, duration, total, exchanges, exchangesAtStart, stats.SecurityTokens, stats.Refusals, f.KMS.Stats().Total))
		GinkgoWriter.Printf("keyless expiry: %d refreshes, %d exchanges in all, %d in the window\n", total, exchanges, exchanges-exchangesAtStart)

		Expect(notSynced).To(BeEmpty(), "every selector stays Synced while its credentials expire and are replaced")
		Expect(len(refreshes)).To(Equal(selectors))
		for name, n := range refreshes {
			Expect(n).To(BeNumerically(">=", 30), "%s refreshed every 10s", name)
		}
		// 2-minute credentials are replaced once 90s have passed: 4 or 5 exchanges cover the
		// 6-minute window, however many selectors use them.
		Expect(exchanges - exchangesAtStart).To(BeNumerically("<=", 5))
		Expect(exchanges-exchangesAtStart).To(BeNumerically(">=", 3), "the credentials expired and were replaced")
		Expect(stats.Refusals).To(BeZero())
		Expect(f.KMS.Stats().ByStatus[403]).To(BeZero(), "KMS never saw expired credentials")
	})
})
