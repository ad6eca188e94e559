package controllers_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
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
		Eventually(func() error { return user.Create(ctx(), borrow) }).Should(Succeed()) // once RBAC has caught up
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

// forgedDigest computes the content digest annotation as anyone who reads the operator's source
// can: the SHA-256 of the entries, each framed by its length.
func forgedDigest(cm *corev1.ConfigMap) string {
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(cm.Data)) {
		fmt.Fprintf(h, "d%d:%s%d:%s", len(k), k, len(cm.Data[k]), cm.Data[k])
	}
	for _, k := range slices.Sorted(maps.Keys(cm.BinaryData)) {
		fmt.Fprintf(h, "b%d:%s%d:%s", len(k), k, len(cm.BinaryData[k]), cm.BinaryData[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

var _ = Describe("A hostile tenant who may edit ConfigMaps", func() {
	It("cannot make the operator accept, or restore, a ConfigMap it forged with a matching digest", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		sel := f.Create(f.Selector("keys", testkit.WithRefreshInterval(time.Hour)))
		Eventually(f.States("keys")).Should(Equal(testkit.StatesOf(keyA)))
		synced := f.ConfigMap("keys")(Default).Data
		user := namespaceUser(f.Namespace)

		By("editing the data and recomputing the digest annotation")
		forged := f.ConfigMap("keys")(Default)
		forged.Data["forged-key"] = "Enabled"
		forged.Data[kmsv1alpha1.KeysJSONKey] = `[{"id":"forged-key","state":"Enabled"}]`
		forged.Annotations[kmsv1alpha1.ContentDigestAnnotation] = forgedDigest(forged)
		Eventually(func() error { return user.Update(ctx(), forged) }).Should(Succeed()) // once RBAC has caught up
		Eventually(func(g Gomega) map[string]string { return f.ConfigMap("keys")(g).Data }).Should(Equal(synced),
			"the forged content was accepted")

		By("forging it again, then deleting the ConfigMap")
		forged = f.ConfigMap("keys")(Default)
		forged.Data = map[string]string{"forged-key": "Enabled"}
		forged.Annotations[kmsv1alpha1.ContentDigestAnnotation] = forgedDigest(forged)
		Expect(user.Update(ctx(), forged)).To(Succeed())
		Expect(user.Delete(ctx(), forged)).To(Succeed())
		Eventually(func(g Gomega) map[string]string { return f.ConfigMap("keys")(g).Data }).Should(Equal(synced),
			"the ConfigMap was restored from forged content")
		Expect(f.FilterCalls()).To(Equal(int64(1)), "the repairs listed KMS")

		By("the other tenants still syncing")
		other := newFixture(kmstest.WithKeys(keyB))
		theirs := other.Create(other.Selector("keys"))
		Eventually(other.ReadyReason(theirs)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.Get(sel)(Default).Status.ContentDigest).To(Equal(forgedDigest(&corev1.ConfigMap{Data: synced})))
	})
})

var _ = Describe("A force-sync", func() {
	It("is never answered by a listing that began before it", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB))
		user := namespaceUser(f.Namespace)
		// Two selectors that ask the same question share listings; a page of one key makes a
		// listing of two keys take two calls.
		ask := []func(*kmsv1alpha1.KmsKeySelector){testkit.WithTags(testkit.Tag("env", "prod")), testkit.WithPageSize(1), testkit.WithRefreshInterval(time.Hour)}
		slow, forced := f.Create(f.Selector("slow", ask...)), f.Create(f.Selector("forced", ask...))
		for _, s := range []*kmsv1alpha1.KmsKeySelector{slow, forced} {
			Eventually(f.States(s.Name)).Should(Equal(testkit.StatesOf(keyA, keyB)))
		}

		By("holding a listing for the first selector after its first page")
		Expect(f.KMS.InjectFault(kmstest.Fault{Kind: kmstest.FaultLatency, Action: kmstest.ActionFilter, Skip: 1, Times: 1, Delay: 3 * time.Second})).To(Succeed())
		Eventually(func() error { _, err := testkit.ForceSync(ctx(), user, slow); return err }).Should(Succeed())
		Eventually(f.KMS.Faults).Should(BeEmpty(), "the second page is being held")

		By("disabling the first key, then force-syncing the second selector")
		Expect(f.KMS.SetKeyState(keyA.ID, kms.StateDisabled)).To(Succeed())
		_, err := testkit.ForceSync(ctx(), user, forced)
		Expect(err).NotTo(HaveOccurred())
		Eventually(f.Handled(forced)).Should(Succeed())
		Expect(f.States("forced")(Default)).To(HaveKeyWithValue(keyA.ID, kms.StateDisabled.String()),
			"the force-sync was answered by the listing that began before it")
	})
})
