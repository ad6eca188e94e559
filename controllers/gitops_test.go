package controllers_test

import (
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// kstatusOf computes the selector's status as kstatus (Flux, kubectl wait) does, from the object
// the API server stores.
func kstatusOf(sel *kmsv1alpha1.KmsKeySelector) func(Gomega) status.Status {
	return func(g Gomega) status.Status {
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(kmsv1alpha1.GroupVersion.WithKind("KmsKeySelector"))
		g.Expect(k8sClient.Get(ctx(), client.ObjectKeyFromObject(sel), u)).To(Succeed())
		res, err := status.Compute(u)
		g.Expect(err).NotTo(HaveOccurred())
		return res.Status
	}
}

var _ = Describe("GitOps tools", func() {
	It("see a synced selector as Current, one answering a force-sync as InProgress, and a stuck one as Failed", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		sel := f.Create(f.Selector("gitops", testkit.WithRefreshInterval(time.Hour)))
		Eventually(kstatusOf(sel)).Should(Equal(status.CurrentStatus))

		By("holding the listing of a force-sync")
		Expect(f.KMS.InjectFault(kmstest.Fault{Kind: kmstest.FaultLatency, Action: kmstest.ActionFilter, Times: 1, Delay: 3 * time.Second})).To(Succeed())
		f.ForceSync(sel)
		Eventually(func(g Gomega) *bool {
			c := meta.FindStatusCondition(f.Get(sel)(g).Status.Conditions, kmsv1alpha1.ConditionReconciling)
			if c == nil {
				return nil
			}
			t := c.Status == "True" && c.Reason == kmsv1alpha1.ReasonProgressing
			return &t
		}).Should(HaveValue(BeTrue()))
		Expect(kstatusOf(sel)(Default)).To(Equal(status.InProgressStatus))
		Eventually(f.Handled(sel)).Should(Succeed())
		Expect(meta.FindStatusCondition(f.Get(sel)(Default).Status.Conditions, kmsv1alpha1.ConditionReconciling)).To(BeNil())
		Expect(kstatusOf(sel)(Default)).To(Equal(status.CurrentStatus))

		By("an endpoint the operator will not send credentials to")
		Eventually(func(g Gomega) {
			cur := f.Get(sel)(g)
			cur.Spec.Provider.Endpoint = strings.Replace(f.KMS.URL, "https://", "http://", 1)
			g.Expect(k8sClient.Update(ctx(), cur)).To(Succeed())
		}).Should(Succeed())
		Eventually(kstatusOf(sel)).Should(Equal(status.FailedStatus))
		stalled := meta.FindStatusCondition(f.Get(sel)(Default).Status.Conditions, kmsv1alpha1.ConditionStalled)
		Expect(stalled).NotTo(BeNil())
		Expect(stalled.Reason).To(Equal(kmsv1alpha1.ReasonInsecureEndpoint))
		Expect(stalled.Message).To(ContainSubstring("spec.provider.endpoint"))
	})
})
