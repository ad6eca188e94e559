package controllers_test

import (
	"net/http"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// scrape reads the operator's metrics endpoint.
func scrape(g Gomega) map[string]*dto.MetricFamily {
	resp, err := http.Get(metricsURL)
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	return families
}

// sample returns the value of the series of family whose labels include want; 0 when absent.
func sample(families map[string]*dto.MetricFamily, family string, want map[string]string) float64 {
	f, ok := families[family]
	if !ok {
		return 0
	}
	total := 0.0
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && labels[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			total += m.GetCounter().GetValue()
		case m.Gauge != nil:
			total += m.GetGauge().GetValue()
		case m.Histogram != nil:
			total += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return total
}

var _ = Describe("Metrics", func() {
	It("are served on the metrics endpoint and move with syncs", func() {
		before := scrape(Default)
		f := newFixture(kmstest.WithKeys(keyA, keyB, keyD))
		sel := f.create(f.selector("metered"))
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))

		Eventually(func(g Gomega) {
			after := scrape(g)
			grew := func(family string, labels map[string]string) float64 {
				return sample(after, family, labels) - sample(before, family, labels)
			}
			g.Expect(grew("kms_key_sync_kms_requests_total", map[string]string{"operation": "filter", "outcome": "success"})).To(BeNumerically(">=", 1))
			g.Expect(grew("kms_key_sync_kms_request_duration_seconds", map[string]string{"operation": "filter"})).To(BeNumerically(">=", 1))
			g.Expect(grew("kms_key_sync_syncs_total", map[string]string{"result": "Synced"})).To(BeNumerically(">=", 1))
			g.Expect(grew("kms_key_sync_configmap_writes_total", nil)).To(BeNumerically(">=", 1))
			selector := map[string]string{"namespace": f.ns, "selector": "metered"}
			g.Expect(sample(after, "kms_key_sync_selector_ready", selector)).To(Equal(1.0))
			for state, n := range map[string]float64{"Enabled": 1, "Disabled": 1, "PendingDeletion": 1, "PendingImport": 0} {
				g.Expect(sample(after, "kms_key_sync_keys", map[string]string{"namespace": f.ns, "selector": "metered", "state": state})).To(Equal(n), state)
			}
			g.Expect(after).To(HaveKey("kms_key_sync_coalesced_requests_total"))
		}).Should(Succeed())

		By("a failure")
		Expect(f.kms.InjectFault(kmstest.Fault{Kind: kmstest.FaultKMSError, Code: "KMS.0202"})).To(Succeed())
		forceSync(sel)
		Eventually(func(g Gomega) float64 {
			return sample(scrape(g), "kms_key_sync_selector_ready", map[string]string{"namespace": f.ns, "selector": "metered"})
		}).Should(Equal(0.0))
		Expect(sample(scrape(Default), "kms_key_sync_syncs_total", map[string]string{"result": kmsv1alpha1.ReasonKMSRequestFailed})).
			To(BeNumerically(">", sample(before, "kms_key_sync_syncs_total", map[string]string{"result": kmsv1alpha1.ReasonKMSRequestFailed})))
	})
})

var _ = Describe("Coalescing", func() {
	It("serves selectors that ask the same question with one listing, first and on every refresh", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB, keyC))
		coalescedBefore := sample(scrape(Default), "kms_key_sync_coalesced_requests_total", nil)
		every10s := func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.RefreshInterval = &metav1.Duration{Duration: 10 * time.Second}
			s.Spec.Tags = []kmsv1alpha1.TagSelector{tag("team", "payments")}
		}
		sels := []*kmsv1alpha1.KmsKeySelector{
			f.create(f.selector("same-1", every10s)), f.create(f.selector("same-2", every10s)), f.create(f.selector("same-3", every10s)),
		}
		firstSync := map[string]time.Time{}
		for _, sel := range sels {
			Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
			Expect(f.states(sel.Name)(Default)).To(Equal(statesOf(keyA, keyB, keyC)))
			firstSync[sel.Name] = get(sel)(Default).Status.LastSyncTime.Time
		}
		Expect(f.filterCalls()).To(Equal(int64(1)))

		By("the next refresh")
		for _, sel := range sels {
			Eventually(func(g Gomega) time.Time { return get(sel)(g).Status.LastSyncTime.Time }, 30*time.Second).
				Should(BeTemporally(">", firstSync[sel.Name]))
		}
		Expect(f.filterCalls()).To(Equal(int64(2)))
		Expect(sample(scrape(Default), "kms_key_sync_coalesced_requests_total", nil) - coalescedBefore).To(Equal(4.0))
	})
})
