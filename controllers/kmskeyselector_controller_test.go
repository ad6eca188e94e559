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
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

var (
	prod     = map[string]string{"env": "prod", "team": "payments"}
	staging  = map[string]string{"env": "staging", "team": "payments"}
	search   = map[string]string{"env": "prod", "team": "search"}
	untagged = map[string]string{}

	keyA = testkit.Key("0a000000-0000-4000-8000-000000000001", "payments-db", kms.StateEnabled, prod)
	keyB = testkit.Key("0b000000-0000-4000-8000-000000000002", "payments-api", kms.StateDisabled, prod)
	keyC = testkit.Key("0c000000-0000-4000-8000-000000000003", "payments-db-staging", kms.StateEnabled, staging)
	keyD = testkit.Key("0d000000-0000-4000-8000-000000000004", "search-index", kms.StatePendingDeletion, search)
	keyE = testkit.Key("0e000000-0000-4000-8000-000000000005", "orphan", kms.StateEnabled, untagged)
)

var _ = Describe("KmsKeySelector", func() {
	DescribeTable("writes the matching keys to a ConfigMap and reports them in status",
		func(shape kmstest.Shape) {
			f := newFixture(kmstest.WithShape(shape), kmstest.WithKeys(keyA, keyB, keyC, keyD, keyE))
			keyA := keyA
			keyA.CreationDate = time.Date(2024, 3, 19, 8, 47, 57, 0, time.UTC)
			Expect(f.KMS.PutKeys(keyA)).To(Succeed())
			sel := f.Create(f.Selector("payments", testkit.WithTags(testkit.Tag("env", "prod"))))

			Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
			cm := f.ConfigMap("payments")(Default)
			Expect(f.States("payments")(Default)).To(Equal(testkit.StatesOf(keyA, keyB, keyD)))
			Expect(cm.Labels).To(HaveKeyWithValue("app.kubernetes.io/managed-by", "kms-key-sync"))
			Expect(cm.Labels).To(HaveKeyWithValue("kms.keysync.dev/selector", "payments"))
			Expect(cm.OwnerReferences).To(ConsistOf(HaveField("UID", f.Get(sel)(Default).UID)))

			records, err := testkit.KeysJSON(cm)
			Expect(err).NotTo(HaveOccurred())
			Expect(records).To(HaveLen(3))
			Expect(records[0]).To(Equal(map[string]any{
				"id": keyA.ID, "alias": "payments-db", "state": "Enabled", "spec": "AES_256",
				"usage": "ENCRYPT_DECRYPT", "origin": "kms", "tags": map[string]any{"env": "prod", "team": "payments"},
				"creationDate": "2024-03-19T08:47:57Z",
			}))
			Expect([]any{records[1]["id"], records[2]["id"]}).To(Equal([]any{keyB.ID, keyD.ID}))

			st := f.Get(sel)(Default).Status
			Expect(st.KeyCount).To(Equal(ptr.To[int32](3)))
			Expect(*st.StateCounts).To(Equal(kmsv1alpha1.StateCounts{Enabled: 1, Disabled: 1, PendingDeletion: 1}))
			Expect(st.Keys).To(Equal([]kmsv1alpha1.KeyStatus{
				{ID: keyA.ID, Alias: "payments-db", State: "Enabled"},
				{ID: keyB.ID, Alias: "payments-api", State: "Disabled"},
				{ID: keyD.ID, Alias: "search-index", State: "PendingDeletion"},
			}))
			Expect(st.LastSyncTime).NotTo(BeNil())
			Expect(st.ConfigMapName).To(Equal("payments"))
			Expect(st.ObservedGeneration).To(Equal(f.Get(sel)(Default).Generation))
		},
		Entry("schema-shaped responses", kmstest.ShapeSchema),
		Entry("responses shaped like the vendor's example", kmstest.ShapeExample),
	)

	DescribeTable("selects keys by tags and matches",
		func(mutate func(*kmsv1alpha1.KmsKeySelector), want ...kms.Key) {
			f := newFixture(kmstest.WithKeys(keyA, keyB, keyC, keyD, keyE))
			sel := f.Create(f.Selector("sel", mutate))
			Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
			Expect(f.States("sel")(Default)).To(Equal(testkit.StatesOf(want...)))
		},
		Entry("no tags selects every key", testkit.WithTags(), keyA, keyB, keyC, keyD, keyE),
		Entry("values of one key are ORed", testkit.WithTags(testkit.Tag("env", "prod", "staging")), keyA, keyB, keyC, keyD),
		Entry("different keys are ANDed", testkit.WithTags(testkit.Tag("env", "prod"), testkit.Tag("team", "search")), keyD),
		Entry("an empty value list matches any value", testkit.WithTags(testkit.Tag("team")), keyA, keyB, keyC, keyD),
		Entry("a match is a case-sensitive substring of the alias", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.Matches = []kmsv1alpha1.MatchSelector{{Key: kmsv1alpha1.MatchFieldResourceName, Value: "payments-db"}}
		}, keyA, keyC),
		Entry("matches and tags are ANDed", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.Tags = []kmsv1alpha1.TagSelector{testkit.Tag("env", "staging")}
			s.Spec.Matches = []kmsv1alpha1.MatchSelector{{Key: kmsv1alpha1.MatchFieldResourceName, Value: "payments"}}
		}, keyC),
		Entry("nothing matching gives an empty ConfigMap", testkit.WithTags(testkit.Tag("env", "dev"))),
	)

	It("pages with spec.pageSize, one call per page", func() {
		f := newFixture(kmstest.WithKeys(kmstest.GenerateKeys(25, prod)...))
		sel := f.Create(f.Selector("paged", func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.PageSize = ptr.To[int32](10) }))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.States("paged")(Default)).To(HaveLen(25))
		Expect(f.FilterCalls()).To(Equal(int64(3)))
	})

	It("lists again at once when the spec changes", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB, keyC, keyD))
		sel := f.Create(f.Selector("respec", testkit.WithTags(testkit.Tag("env", "staging"))))
		Eventually(f.States("respec")).Should(Equal(testkit.StatesOf(keyC)))
		Eventually(func(g Gomega) {
			cur := f.Get(sel)(g)
			cur.Spec.Tags = []kmsv1alpha1.TagSelector{testkit.Tag("team", "search")}
			g.Expect(k8sClient.Update(ctx(), cur)).To(Succeed())
		}).Should(Succeed())
		Eventually(f.States("respec")).Should(Equal(testkit.StatesOf(keyD)))
		Eventually(f.Handled(sel)).Should(Succeed())
	})

	It("writes to spec.target.configMapName", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		sel := f.Create(f.Selector("named", func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.Target.ConfigMapName = "elsewhere" }))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.States("elsewhere")(Default)).To(Equal(testkit.StatesOf(keyA)))
		Expect(k8sClient.Get(ctx(), client.ObjectKey{Namespace: f.Namespace, Name: "named"}, &corev1.ConfigMap{})).
			To(Satisfy(apierrors.IsNotFound))
	})

	It("owns the ConfigMap with deletionPolicy Delete and leaves it alone with Retain", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		deleted := f.Create(f.Selector("deleted"))
		retained := f.Create(f.Selector("retained", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.Target.DeletionPolicy = kmsv1alpha1.DeletionPolicyRetain
		}))
		Eventually(f.ReadyReason(deleted)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Eventually(f.ReadyReason(retained)).Should(Equal(kmsv1alpha1.ReasonSynced))

		// envtest runs no garbage collector: check the owner reference that drives it.
		Expect(f.ConfigMap("deleted")(Default).OwnerReferences).To(ConsistOf(And(
			HaveField("Kind", "KmsKeySelector"), HaveField("Name", "deleted"),
			HaveField("Controller", ptr.To(true)), HaveField("BlockOwnerDeletion", ptr.To(true)))))
		Expect(f.ConfigMap("retained")(Default).OwnerReferences).To(BeEmpty())

		kept := f.ConfigMap("retained")(Default)
		Expect(readySeries(Default, retained)).To(HaveLen(1))
		Expect(k8sClient.Delete(ctx(), retained)).To(Succeed())
		awaitForgotten(retained)
		Expect(f.States("retained")(Default)).To(Equal(testkit.StatesOf(keyA)))
		Expect(f.ConfigMap("retained")(Default).ResourceVersion).To(Equal(kept.ResourceVersion))
	})

	It("suspends without calling KMS and keeps the ConfigMap", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		sel := f.Create(f.Selector("susp"))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		calls := f.FilterCalls()

		Eventually(func(g Gomega) {
			cur := f.Get(sel)(g)
			cur.Spec.Suspend = true
			g.Expect(k8sClient.Update(ctx(), cur)).To(Succeed())
		}).Should(Succeed())
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSuspended))
		kept := f.ConfigMap("susp")(Default)
		Expect(f.KMS.SetKeyState(keyA.ID, kms.StateDisabled)).To(Succeed())
		f.ForceSync(sel)

		// A spec change after the force-sync, still suspended: once the status speaks for it, the
		// force-sync was handled too.
		var generation int64
		Eventually(func(g Gomega) {
			cur := f.Get(sel)(g)
			cur.Spec.PageSize = ptr.To[int32](500)
			g.Expect(k8sClient.Update(ctx(), cur)).To(Succeed())
			generation = cur.Generation
		}).Should(Succeed())
		Eventually(func(g Gomega) int64 { return f.Get(sel)(g).Status.ObservedGeneration }).Should(Equal(generation))
		Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonSuspended))
		Expect(f.States("susp")(Default)).To(Equal(testkit.StatesOf(keyA)))
		Expect(f.ConfigMap("susp")(Default).ResourceVersion).To(Equal(kept.ResourceVersion))
		Expect(f.FilterCalls()).To(Equal(calls))
	})

	It("follows keys that are added, re-tagged, disabled or deleted, on force-sync and on refresh", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB, keyC))
		sel := f.Create(f.Selector("follow", testkit.WithTags(testkit.Tag("env", "prod"))))
		Eventually(f.States("follow")).Should(Equal(testkit.StatesOf(keyA, keyB)))

		By("force-sync")
		Expect(f.KMS.PutKeys(keyD)).To(Succeed())
		Expect(f.KMS.SetKeyTags(keyC.ID, prod)).To(Succeed())
		Expect(f.KMS.SetKeyState(keyA.ID, kms.StateDisabled)).To(Succeed())
		Expect(f.KMS.DeleteKey(keyB.ID)).To(BeTrue())
		f.ForceSync(sel)
		disabledA := keyA
		disabledA.State = kms.StateDisabled
		Eventually(f.States("follow")).Should(Equal(testkit.StatesOf(disabledA, keyC, keyD)))
		Eventually(f.EventReasons(sel)).Should(Equal([]string{"KeyDisabled", "KeysChanged", "KeysChanged"}))

		By("refresh")
		Expect(f.KMS.SetKeyState(keyA.ID, kms.StateEnabled)).To(Succeed())
		Expect(f.KMS.DeleteKey(keyD.ID)).To(BeTrue())
		calls := f.FilterCalls()
		refreshListing(f, sel)
		Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.States("follow")(Default)).To(Equal(testkit.StatesOf(keyA, keyC)))
		Expect(f.FilterCalls()).To(Equal(calls + 1))
	})

	It("emits no event and writes no ConfigMap on an unchanged refresh", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		sel := f.Create(f.Selector("quiet"))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Eventually(f.EventReasons(sel)).Should(Equal([]string{"KeysChanged"}))
		rv := f.ConfigMap("quiet")(Default).ResourceVersion
		calls := f.FilterCalls()

		f.ForceSync(sel)
		Eventually(f.Handled(sel)).Should(Succeed())
		Expect(f.FilterCalls()).To(Equal(calls + 1))
		Expect(f.ConfigMap("quiet")(Default).ResourceVersion).To(Equal(rv))

		// A change made later is reported; an event of the unchanged sync would have come before
		// the events of this one.
		Expect(f.KMS.SetKeyState(keyA.ID, kms.StateDisabled)).To(Succeed())
		f.ForceSync(sel)
		Eventually(f.Events(sel)).Should(ContainElements(
			HaveField("Reason", "KeyDisabled"),
			And(HaveField("Reason", "KeysChanged"), HaveField("Note", ContainSubstring("1 changed state")))))
		Expect(f.EventReasons(sel)(Default)).To(Equal([]string{"KeyDisabled", "KeysChanged", "KeysChanged"}))
		Expect(f.ConfigMap("quiet")(Default).ResourceVersion).NotTo(Equal(rv))
	})

	It("repairs the ConfigMap after an edit or a deletion, without calling KMS", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB))
		f.Create(f.Selector("repair"))
		Eventually(f.States("repair")).Should(Equal(testkit.StatesOf(keyA, keyB)))
		want := f.ConfigMap("repair")(Default).Data
		calls := f.FilterCalls()

		By("an edited value and an added entry")
		cm := f.ConfigMap("repair")(Default)
		cm.Data[keyA.ID] = "Tampered"
		cm.Data["extra"] = "added by someone"
		Expect(k8sClient.Update(ctx(), cm)).To(Succeed())
		Eventually(func(g Gomega) map[string]string { return f.ConfigMap("repair")(g).Data }).Should(Equal(want))

		By("a deletion")
		Expect(k8sClient.Delete(ctx(), f.ConfigMap("repair")(Default))).To(Succeed())
		Eventually(func(g Gomega) map[string]string { return f.ConfigMap("repair")(g).Data }).Should(Equal(want))
		Expect(f.FilterCalls()).To(Equal(calls))
	})

	It("never overwrites a ConfigMap it does not own", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		foreign := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: "taken", Namespace: f.Namespace},
			Data:       map[string]string{"owner": "someone else"},
		}
		Expect(k8sClient.Create(ctx(), foreign)).To(Succeed())
		sel := f.Create(f.Selector("taken"))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonTargetConflict))
		Expect(f.ReadyCondition(sel)(Default).Message).To(ContainSubstring(`ConfigMap "taken" exists`))
		// A backoff retry has met the conflict too.
		awaitFailures(Default, f, sel, 2)
		Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonTargetConflict))
		Expect(f.ConfigMap("taken")(Default).Data).To(Equal(map[string]string{"owner": "someone else"}))
		Expect(f.ConfigMap("taken")(Default).ResourceVersion).To(Equal(foreign.ResourceVersion))

		Expect(k8sClient.Delete(ctx(), foreign)).To(Succeed())
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.States("taken")(Default)).To(Equal(testkit.StatesOf(keyA)))
	})

	It("reports a missing Secret, and recovers when it appears", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		sel := f.Create(f.Selector("nosecret", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.Provider.CredentialsSecretRef = &kmsv1alpha1.SecretReference{Name: "later"}
		}))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsNotFound))
		Expect(f.ReadyCondition(sel)(Default).Message).To(ContainSubstring(`secret "later"`))

		Expect(k8sClient.Create(ctx(), &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "later", Namespace: f.Namespace},
			StringData: map[string]string{"token": f.Token},
		})).To(Succeed())
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
	})

	It("reports an invalid Secret and a rejected credential, and follows a rotation", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		f.PutCredentials(map[string]string{"accessKey": "AKIDONLY"})
		sel := f.Create(f.Selector("rotate"))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsInvalid))
		Expect(f.ReadyCondition(sel)(Default).Message).To(ContainSubstring(`"secretKey" is missing`))

		By("a token KMS does not accept")
		f.PutCredentials(map[string]string{"token": "revoked"})
		f.ForceSync(sel)
		Eventually(func(g Gomega) string { return f.ReadyCondition(sel)(g).Message }).Should(ContainSubstring("KMS.0302"))
		Expect(f.ReadyCondition(sel)(Default).Reason).To(Equal(kmsv1alpha1.ReasonCredentialsInvalid))

		By("rotating to AK/SK")
		f.KMS.AddAKSK("AKROTATED", "rotated-secret-key", "")
		f.PutCredentials(map[string]string{"accessKey": "AKROTATED", "secretKey": "rotated-secret-key"})
		f.ForceSync(sel)
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.States("rotate")(Default)).To(Equal(testkit.StatesOf(keyA)))
	})

	It("refuses a plain http endpoint, which would send credentials in clear text", func() {
		f := newFixture()
		plain := kmstest.NewServer(kmstest.WithToken(f.Token), kmstest.WithKeys(keyA))
		DeferCleanup(plain.Close)
		sel := f.Create(f.Selector("insecure", func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.Provider.Endpoint = plain.URL }))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonInsecureEndpoint))
		Expect(f.ReadyCondition(sel)(Default).Message).To(ContainSubstring("--allow-insecure-endpoints"))
		Expect(plain.Stats().Total).To(BeZero())
	})

	It("keeps the last good data through a KMS outage, and recovers", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB))
		sel := f.Create(f.Selector("outage"))
		Eventually(f.States("outage")).Should(Equal(testkit.StatesOf(keyA, keyB)))
		want, rv := f.ConfigMap("outage")(Default).Data, f.ConfigMap("outage")(Default).ResourceVersion

		Expect(f.KMS.InjectFault(kmstest.Fault{Kind: kmstest.FaultServerError, Status: 503})).To(Succeed())
		Expect(f.KMS.DeleteKey(keyB.ID)).To(BeTrue())
		f.ForceSync(sel)
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonKMSRequestFailed))
		Expect(f.ReadyCondition(sel)(Default).Message).To(ContainSubstring("503"))
		// A backoff retry has failed too; neither wrote.
		awaitFailures(Default, f, sel, 2)
		Expect(f.ConfigMap("outage")(Default).Data).To(Equal(want))
		Expect(f.ConfigMap("outage")(Default).ResourceVersion).To(Equal(rv))

		f.KMS.ClearFaults()
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.States("outage")(Default)).To(Equal(testkit.StatesOf(keyA)))
	})
})
