package controllers_test

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

var (
	prod     = map[string]string{"env": "prod", "team": "payments"}
	staging  = map[string]string{"env": "staging", "team": "payments"}
	search   = map[string]string{"env": "prod", "team": "search"}
	untagged = map[string]string{}

	keyA = key("0a000000-0000-4000-8000-000000000001", "payments-db", kms.StateEnabled, prod)
	keyB = key("0b000000-0000-4000-8000-000000000002", "payments-api", kms.StateDisabled, prod)
	keyC = key("0c000000-0000-4000-8000-000000000003", "payments-db-staging", kms.StateEnabled, staging)
	keyD = key("0d000000-0000-4000-8000-000000000004", "search-index", kms.StatePendingDeletion, search)
	keyE = key("0e000000-0000-4000-8000-000000000005", "orphan", kms.StateEnabled, untagged)
)

func withTags(tags ...kmsv1alpha1.TagSelector) func(*kmsv1alpha1.KmsKeySelector) {
	return func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.Tags = tags }
}

func tag(key string, values ...string) kmsv1alpha1.TagSelector {
	return kmsv1alpha1.TagSelector{Key: key, Values: values}
}

var _ = Describe("KmsKeySelector", func() {
	DescribeTable("writes the matching keys to a ConfigMap and reports them in status",
		func(shape kmstest.Shape) {
			f := newFixture(kmstest.WithShape(shape), kmstest.WithKeys(keyA, keyB, keyC, keyD, keyE))
			keyA := keyA
			keyA.CreationDate = time.Date(2024, 3, 19, 8, 47, 57, 0, time.UTC)
			Expect(f.kms.PutKeys(keyA)).To(Succeed())
			sel := f.create(f.selector("payments", withTags(tag("env", "prod"))))

			Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
			cm := f.configMap("payments")(Default)
			Expect(f.states("payments")(Default)).To(Equal(statesOf(keyA, keyB, keyD)))
			Expect(cm.Labels).To(HaveKeyWithValue("app.kubernetes.io/managed-by", "kms-key-sync"))
			Expect(cm.Labels).To(HaveKeyWithValue("kms.keysync.dev/selector", "payments"))
			Expect(cm.OwnerReferences).To(ConsistOf(HaveField("UID", get(sel)(Default).UID)))

			records := keysJSON(cm)
			Expect(records).To(HaveLen(3))
			Expect(records[0]).To(Equal(map[string]any{
				"id": keyA.ID, "alias": "payments-db", "state": "Enabled", "spec": "AES_256",
				"usage": "ENCRYPT_DECRYPT", "origin": "kms", "tags": map[string]any{"env": "prod", "team": "payments"},
				"creationDate": "2024-03-19T08:47:57Z",
			}))
			Expect([]any{records[1]["id"], records[2]["id"]}).To(Equal([]any{keyB.ID, keyD.ID}))

			st := get(sel)(Default).Status
			Expect(st.KeyCount).To(Equal(ptr.To[int32](3)))
			Expect(*st.StateCounts).To(Equal(kmsv1alpha1.StateCounts{Enabled: 1, Disabled: 1, PendingDeletion: 1}))
			Expect(st.Keys).To(Equal([]kmsv1alpha1.KeyStatus{
				{ID: keyA.ID, Alias: "payments-db", State: "Enabled"},
				{ID: keyB.ID, Alias: "payments-api", State: "Disabled"},
				{ID: keyD.ID, Alias: "search-index", State: "PendingDeletion"},
			}))
			Expect(st.LastSyncTime).NotTo(BeNil())
			Expect(st.ConfigMapName).To(Equal("payments"))
			Expect(st.ObservedGeneration).To(Equal(get(sel)(Default).Generation))
		},
		Entry("schema-shaped responses", kmstest.ShapeSchema),
		Entry("responses shaped like the vendor's example", kmstest.ShapeExample),
	)

	DescribeTable("selects keys by tags and matches",
		func(mutate func(*kmsv1alpha1.KmsKeySelector), want ...kms.Key) {
			f := newFixture(kmstest.WithKeys(keyA, keyB, keyC, keyD, keyE))
			sel := f.create(f.selector("sel", mutate))
			Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
			Expect(f.states("sel")(Default)).To(Equal(statesOf(want...)))
		},
		Entry("no tags selects every key", withTags(), keyA, keyB, keyC, keyD, keyE),
		Entry("values of one key are ORed", withTags(tag("env", "prod", "staging")), keyA, keyB, keyC, keyD),
		Entry("different keys are ANDed", withTags(tag("env", "prod"), tag("team", "search")), keyD),
		Entry("an empty value list matches any value", withTags(tag("team")), keyA, keyB, keyC, keyD),
		Entry("a match is a case-sensitive substring of the alias", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.Matches = []kmsv1alpha1.MatchSelector{{Key: kmsv1alpha1.MatchFieldResourceName, Value: "payments-db"}}
		}, keyA, keyC),
		Entry("matches and tags are ANDed", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.Tags = []kmsv1alpha1.TagSelector{tag("env", "staging")}
			s.Spec.Matches = []kmsv1alpha1.MatchSelector{{Key: kmsv1alpha1.MatchFieldResourceName, Value: "payments"}}
		}, keyC),
		Entry("nothing matching gives an empty ConfigMap", withTags(tag("env", "dev"))),
	)

	It("pages with spec.pageSize, one call per page", func() {
		f := newFixture(kmstest.WithKeys(kmstest.GenerateKeys(25, prod)...))
		sel := f.create(f.selector("paged", func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.PageSize = ptr.To[int32](10) }))
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.states("paged")(Default)).To(HaveLen(25))
		Expect(f.filterCalls()).To(Equal(int64(3)))
	})

	It("lists again at once when the spec changes", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB, keyC, keyD))
		sel := f.create(f.selector("respec", withTags(tag("env", "staging"))))
		Eventually(f.states("respec")).Should(Equal(statesOf(keyC)))
		Eventually(func(g Gomega) {
			cur := get(sel)(g)
			cur.Spec.Tags = []kmsv1alpha1.TagSelector{tag("team", "search")}
			g.Expect(k8sClient.Update(ctx(), cur)).To(Succeed())
		}).Should(Succeed())
		Eventually(f.states("respec")).Should(Equal(statesOf(keyD)))
		waitSynced(sel)
	})

	It("writes to spec.target.configMapName", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		sel := f.create(f.selector("named", func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.Target.ConfigMapName = "elsewhere" }))
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.states("elsewhere")(Default)).To(Equal(statesOf(keyA)))
		Expect(k8sClient.Get(ctx(), client.ObjectKey{Namespace: f.ns, Name: "named"}, &corev1.ConfigMap{})).
			To(Satisfy(apierrors.IsNotFound))
	})

	It("owns the ConfigMap with deletionPolicy Delete and leaves it alone with Retain", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		deleted := f.create(f.selector("deleted"))
		retained := f.create(f.selector("retained", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.Target.DeletionPolicy = kmsv1alpha1.DeletionPolicyRetain
		}))
		Eventually(readyReason(deleted)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Eventually(readyReason(retained)).Should(Equal(kmsv1alpha1.ReasonSynced))

		// envtest runs no garbage collector: check the owner reference that drives it.
		Expect(f.configMap("deleted")(Default).OwnerReferences).To(ConsistOf(And(
			HaveField("Kind", "KmsKeySelector"), HaveField("Name", "deleted"),
			HaveField("Controller", ptr.To(true)), HaveField("BlockOwnerDeletion", ptr.To(true)))))
		Expect(f.configMap("retained")(Default).OwnerReferences).To(BeEmpty())

		Expect(k8sClient.Delete(ctx(), retained)).To(Succeed())
		Consistently(f.states("retained")).Should(Equal(statesOf(keyA)))
	})

	It("suspends without calling KMS and keeps the ConfigMap", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		sel := f.create(f.selector("susp"))
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		calls := f.filterCalls()

		Eventually(func(g Gomega) {
			cur := get(sel)(g)
			cur.Spec.Suspend = true
			g.Expect(k8sClient.Update(ctx(), cur)).To(Succeed())
		}).Should(Succeed())
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSuspended))
		Expect(f.kms.SetKeyState(keyA.ID, kms.StateDisabled)).To(Succeed())
		forceSync(sel)
		Consistently(f.states("susp")).Should(Equal(statesOf(keyA)))
		Expect(f.filterCalls()).To(Equal(calls))
	})

	It("follows keys that are added, re-tagged, disabled or deleted, on force-sync and on refresh", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB, keyC))
		sel := f.create(f.selector("follow", withTags(tag("env", "prod")), func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.RefreshInterval = &metav1.Duration{Duration: 10 * time.Second}
		}))
		Eventually(f.states("follow")).Should(Equal(statesOf(keyA, keyB)))

		By("force-sync")
		Expect(f.kms.PutKeys(keyD)).To(Succeed())
		Expect(f.kms.SetKeyTags(keyC.ID, prod)).To(Succeed())
		Expect(f.kms.SetKeyState(keyA.ID, kms.StateDisabled)).To(Succeed())
		Expect(f.kms.DeleteKey(keyB.ID)).To(BeTrue())
		forceSync(sel)
		disabledA := keyA
		disabledA.State = kms.StateDisabled
		Eventually(f.states("follow")).Should(Equal(statesOf(disabledA, keyC, keyD)))
		Eventually(eventReasons(sel)).Should(Equal([]string{"KeyDisabled", "KeysChanged", "KeysChanged"}))

		By("refresh")
		Expect(f.kms.SetKeyState(keyA.ID, kms.StateEnabled)).To(Succeed())
		Expect(f.kms.DeleteKey(keyD.ID)).To(BeTrue())
		Eventually(f.states("follow"), 15*time.Second).Should(Equal(statesOf(keyA, keyC)))
	})

	It("emits no event and writes no ConfigMap on an unchanged refresh", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		sel := f.create(f.selector("quiet"))
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Eventually(eventReasons(sel)).Should(Equal([]string{"KeysChanged"}))
		rv := f.configMap("quiet")(Default).ResourceVersion
		calls := f.filterCalls()

		forceSync(sel)
		waitSynced(sel)
		Expect(f.filterCalls()).To(Equal(calls + 1))
		Expect(f.configMap("quiet")(Default).ResourceVersion).To(Equal(rv))
		Consistently(eventReasons(sel)).Should(Equal([]string{"KeysChanged"}))
	})

	It("repairs the ConfigMap after an edit or a deletion, without calling KMS", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB))
		f.create(f.selector("repair"))
		Eventually(f.states("repair")).Should(Equal(statesOf(keyA, keyB)))
		want := f.configMap("repair")(Default).Data
		calls := f.filterCalls()

		By("an edited value and an added entry")
		cm := f.configMap("repair")(Default)
		cm.Data[keyA.ID] = "Tampered"
		cm.Data["extra"] = "added by someone"
		Expect(k8sClient.Update(ctx(), cm)).To(Succeed())
		Eventually(func(g Gomega) map[string]string { return f.configMap("repair")(g).Data }).Should(Equal(want))

		By("a deletion")
		Expect(k8sClient.Delete(ctx(), f.configMap("repair")(Default))).To(Succeed())
		Eventually(func(g Gomega) map[string]string { return f.configMap("repair")(g).Data }).Should(Equal(want))
		Expect(f.filterCalls()).To(Equal(calls))
	})

	It("never overwrites a ConfigMap it does not own", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		foreign := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: "taken", Namespace: f.ns},
			Data:       map[string]string{"owner": "someone else"},
		}
		Expect(k8sClient.Create(ctx(), foreign)).To(Succeed())
		sel := f.create(f.selector("taken"))
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonTargetConflict))
		Expect(readyCondition(sel).Message).To(ContainSubstring(`ConfigMap "taken" exists`))
		Consistently(func(g Gomega) map[string]string { return f.configMap("taken")(g).Data }).
			Should(Equal(map[string]string{"owner": "someone else"}))

		Expect(k8sClient.Delete(ctx(), foreign)).To(Succeed())
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.states("taken")(Default)).To(Equal(statesOf(keyA)))
	})

	It("reports a missing Secret, and recovers when it appears", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		sel := f.create(f.selector("nosecret", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.Provider.CredentialsSecretRef.Name = "later"
		}))
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsNotFound))
		Expect(readyCondition(sel).Message).To(ContainSubstring(`secret "later"`))

		Expect(k8sClient.Create(ctx(), &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "later", Namespace: f.ns},
			StringData: map[string]string{"token": f.token},
		})).To(Succeed())
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
	})

	It("reports an invalid Secret and a rejected credential, and follows a rotation", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		f.putSecret(map[string]string{"accessKey": "AKIDONLY"})
		sel := f.create(f.selector("rotate"))
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsInvalid))
		Expect(readyCondition(sel).Message).To(ContainSubstring(`"secretKey" is missing`))

		By("a token KMS does not accept")
		f.putSecret(map[string]string{"token": "revoked"})
		forceSync(sel)
		Eventually(func(g Gomega) string { return readyCondition(sel).Message }).Should(ContainSubstring("KMS.0302"))
		Expect(readyCondition(sel).Reason).To(Equal(kmsv1alpha1.ReasonCredentialsInvalid))

		By("rotating to AK/SK")
		f.kms.AddAKSK("AKROTATED", "rotated-secret-key", "")
		f.putSecret(map[string]string{"accessKey": "AKROTATED", "secretKey": "rotated-secret-key"})
		forceSync(sel)
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.states("rotate")(Default)).To(Equal(statesOf(keyA)))
	})

	It("refuses a plain http endpoint, which would send credentials in clear text", func() {
		f := newFixture()
		plain := kmstest.NewServer(kmstest.WithToken(f.token), kmstest.WithKeys(keyA))
		DeferCleanup(plain.Close)
		sel := f.create(f.selector("insecure", func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.Provider.Endpoint = plain.URL }))
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonInsecureEndpoint))
		Expect(readyCondition(sel).Message).To(ContainSubstring("--allow-insecure-endpoints"))
		Expect(plain.Stats().Total).To(BeZero())
	})

	It("keeps the last good data through a KMS outage, and recovers", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB))
		sel := f.create(f.selector("outage"))
		Eventually(f.states("outage")).Should(Equal(statesOf(keyA, keyB)))
		want := f.configMap("outage")(Default).Data

		Expect(f.kms.InjectFault(kmstest.Fault{Kind: kmstest.FaultServerError, Status: 503})).To(Succeed())
		Expect(f.kms.DeleteKey(keyB.ID)).To(BeTrue())
		forceSync(sel)
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonKMSRequestFailed))
		Expect(readyCondition(sel).Message).To(ContainSubstring("503"))
		Consistently(func(g Gomega) map[string]string { return f.configMap("outage")(g).Data }).Should(Equal(want))

		f.kms.ClearFaults()
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.states("outage")(Default)).To(Equal(statesOf(keyA)))
	})
})
