package controllers_test

import (
	"fmt"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// makeValidationDue backdates the provider's last validation by two hours and pokes it, then
// waits until the operator has validated it again.
func makeValidationDue(p client.Object, status func(Gomega) *kmsv1alpha1.KmsProviderStatus) {
	GinkgoHelper()
	stale := metav1.NewTime(time.Now().Add(-2 * time.Hour))
	Expect(k8sClient.Status().Patch(ctx(), p, client.RawPatch(types.MergePatchType,
		[]byte(fmt.Sprintf(`{"status":{"lastValidationTime":%q}}`, stale.UTC().Format(time.RFC3339)))))).To(Succeed())
	Expect(k8sClient.Patch(ctx(), p, client.RawPatch(types.MergePatchType,
		[]byte(fmt.Sprintf(`{"metadata":{"annotations":{"test.kms.keysync.dev/poke":%q}}}`, stale.String()))))).To(Succeed())
	Eventually(func(g Gomega) time.Time { return status(g).LastValidationTime.Time }).Should(BeTemporally(">", stale.Time))
}

var _ = Describe("A hostile tenant", func() {
	It("cannot make a ClusterKmsProvider that excludes its namespace call KMS, nor count among its selectors", func() {
		admin := newFixture(kmstest.WithKeys(keyA))
		label := "team-" + admin.Namespace
		p := sharedProvider(admin, label)
		status := providerStatus(p, func() *kmsv1alpha1.KmsProviderStatus { return &p.Status })
		Eventually(status).Should(HaveField("Conditions", ContainElement(HaveField("Reason", kmsv1alpha1.ReasonValidated))))
		team := admin.Tenant(map[string]string{label: "yes"})
		synced := team.Create(team.Selector("keys", referTo(kmsv1alpha1.KindClusterKmsProvider, p.Name), testkit.WithRefreshInterval(time.Hour)))
		Eventually(team.ReadyReason(synced)).Should(Equal(kmsv1alpha1.ReasonSynced))

		hostile := admin.Tenant(map[string]string{label: "no"})
		user := namespaceUser(hostile.Namespace)
		borrow := hostile.Selector("borrow", referTo(kmsv1alpha1.KindClusterKmsProvider, p.Name), testkit.WithRefreshInterval(10*time.Second))
		Expect(user.Create(ctx(), borrow)).To(Succeed())
		deleteSelectorAtCleanup(borrow)
		Eventually(hostile.ReadyReason(borrow)).Should(Equal(kmsv1alpha1.ReasonProviderNotAllowed))
		counted := admin.KMS.Stats().ByAction[kmstest.ActionCount]

		By("making the provider's validation due")
		makeValidationDue(p, status)
		Expect(status(Default).Selectors).To(Equal(int32(1)), "the refused selector is counted")
		ready := meta.FindStatusCondition(status(Default).Conditions, kmsv1alpha1.ConditionReady)
		Expect(ready.Message).To(ContainSubstring("within 1h0m0s"),
			"the refused selector's 10s refresh set the provider's validation interval")
		Expect(admin.KMS.Stats().ByAction[kmstest.ActionCount]).To(Equal(counted), "count calls with the admin's credentials")

		By("the allowed tenant still syncing")
		settle(Default, team, synced)
		Expect(testkit.ReadyCondition(team.Get(synced)(Default)).Reason).To(Equal(kmsv1alpha1.ReasonSynced))
	})
})
