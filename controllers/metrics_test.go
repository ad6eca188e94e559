package controllers_test

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// scrape reads the operator's metrics endpoint.
func scrape(g Gomega) testkit.Metrics { return testkit.Scrape(metricsURL)(g) }

var _ = Describe("Metrics", func() {
	It("are served on the metrics endpoint and move with syncs", func() {
		before := scrape(Default)
		f := newFixture(kmstest.WithKeys(keyA, keyB, keyD))
		sel := f.Create(f.Selector("metered"))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))

		Eventually(func(g Gomega) {
			after := scrape(g)
			grew := func(family string, labels map[string]string) float64 {
				return after.Sum(family, labels) - before.Sum(family, labels)
			}
			g.Expect(grew("kms_key_sync_kms_requests_total", map[string]string{"operation": "filter", "outcome": "success"})).To(BeNumerically(">=", 1))
			g.Expect(grew("kms_key_sync_kms_request_duration_seconds", map[string]string{"operation": "filter"})).To(BeNumerically(">=", 1))
			g.Expect(grew("kms_key_sync_syncs_total", map[string]string{"result": "Synced"})).To(BeNumerically(">=", 1))
			g.Expect(grew("kms_key_sync_configmap_writes_total", nil)).To(BeNumerically(">=", 1))
			g.Expect(grew("kms_key_sync_listings_total", map[string]string{"trigger": "first_sync"})).To(BeNumerically(">=", 1))
			selector := map[string]string{"namespace": f.Namespace, "selector": "metered"}
			g.Expect(after.Sum("kms_key_sync_selector_ready", selector)).To(Equal(1.0))
			for state, n := range map[string]float64{"Enabled": 1, "Disabled": 1, "PendingDeletion": 1, "PendingImport": 0} {
				g.Expect(after.Sum("kms_key_sync_keys", map[string]string{"namespace": f.Namespace, "selector": "metered", "state": state})).To(Equal(n), state)
			}
			g.Expect(after).To(HaveKey("kms_key_sync_coalesced_requests_total"))
		}).Should(Succeed())

		By("a failure")
		Expect(f.KMS.InjectFault(kmstest.Fault{Kind: kmstest.FaultKMSError, Code: "KMS.0202"})).To(Succeed())
		f.ForceSync(sel)
		Eventually(func(g Gomega) float64 {
			return scrape(g).Sum("kms_key_sync_selector_ready", map[string]string{"namespace": f.Namespace, "selector": "metered"})
		}).Should(Equal(0.0))
		Expect(scrape(Default).Sum("kms_key_sync_syncs_total", map[string]string{"result": kmsv1alpha1.ReasonKMSRequestFailed})).
			To(BeNumerically(">", before.Sum("kms_key_sync_syncs_total", map[string]string{"result": kmsv1alpha1.ReasonKMSRequestFailed})))
		forced := map[string]string{"trigger": "force_sync"}
		Expect(scrape(Default).Sum("kms_key_sync_listings_total", forced)).To(BeNumerically(">", before.Sum("kms_key_sync_listings_total", forced)))
	})
})

var _ = Describe("Coalescing", func() {
	It("serves selectors that ask the same question with one listing, first and on every refresh", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB, keyC))
		coalescedBefore := scrape(Default).Sum("kms_key_sync_coalesced_requests_total", nil)
		sameQuestion := func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.RefreshInterval = &metav1.Duration{Duration: time.Hour}
			s.Spec.Tags = []kmsv1alpha1.TagSelector{testkit.Tag("team", "payments")}
		}
		sels := []*kmsv1alpha1.KmsKeySelector{
			f.Create(f.Selector("same-1", sameQuestion)), f.Create(f.Selector("same-2", sameQuestion)), f.Create(f.Selector("same-3", sameQuestion)),
		}
		for _, sel := range sels {
			deleteSelectorAtCleanup(sel)
		}
		for _, sel := range sels {
			Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
			Expect(f.States(sel.Name)(Default)).To(Equal(testkit.StatesOf(keyA, keyB, keyC)))
		}
		Expect(f.FilterCalls()).To(Equal(int64(1)))

		By("the next refresh")
		refreshListing(f, sels...)
		for _, sel := range sels {
			Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonSynced))
		}
		Expect(f.FilterCalls()).To(Equal(int64(2)))
		// Other specs' selectors may be coalesced meanwhile too: this fixture's are at least two on
		// the first sync and two on the refresh.
		Expect(scrape(Default).Sum("kms_key_sync_coalesced_requests_total", nil) - coalescedBefore).To(BeNumerically(">=", 4))
	})
})
