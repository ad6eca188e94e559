package controllers_test

import (
	"fmt"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// referTo makes a selector list through a provider instead of its inline one.
func referTo(kind, name string) func(*kmsv1alpha1.KmsKeySelector) {
	return func(s *kmsv1alpha1.KmsKeySelector) {
		s.Spec.Provider = nil
		s.Spec.ProviderRef = &kmsv1alpha1.ProviderReference{Kind: kind, Name: name}
	}
}

// kmsProvider is a KmsProvider of a project of the emulator at endpoint, with the credentials
// of a Secret of its namespace.
func kmsProvider(namespace, name, endpoint, secret string) *kmsv1alpha1.KmsProvider {
	return &kmsv1alpha1.KmsProvider{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: kmsv1alpha1.KmsProviderSpec{
			KMSLocation: kmsv1alpha1.KMSLocation{ProjectID: kmstest.DefaultProjectID, Endpoint: endpoint},
			Auth:        kmsv1alpha1.KmsProviderAuth{SecretRef: &kmsv1alpha1.SecretReference{Name: secret}},
		},
	}
}

// sharedProvider is a ClusterKmsProvider of f's emulator, whose Secret is f's credentials
// Secret, for the namespaces that carry label=yes.
func sharedProvider(f *testkit.Fixture, label string) *kmsv1alpha1.ClusterKmsProvider {
	GinkgoHelper()
	p := &kmsv1alpha1.ClusterKmsProvider{
		ObjectMeta: metav1.ObjectMeta{Name: "shared-" + f.Namespace},
		Spec: kmsv1alpha1.ClusterKmsProviderSpec{
			KMSLocation: kmsv1alpha1.KMSLocation{ProjectID: kmstest.DefaultProjectID, Endpoint: f.KMS.URL},
			Auth: kmsv1alpha1.ClusterKmsProviderAuth{SecretRef: &kmsv1alpha1.ClusterSecretReference{
				Name: testkit.CredentialsSecretName, Namespace: f.Namespace,
			}},
			Conditions: []kmsv1alpha1.ClusterKmsProviderCondition{{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{label: "yes"}},
			}},
		},
	}
	Expect(k8sClient.Create(ctx(), p)).To(Succeed())
	DeferCleanup(func() { _ = k8sClient.Delete(ctx(), p) })
	return p
}

func setLabels(ns string, labels map[string]string) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		cur := &corev1.Namespace{}
		g.Expect(k8sClient.Get(ctx(), types.NamespacedName{Name: ns}, cur)).To(Succeed())
		cur.Labels = labels
		g.Expect(k8sClient.Update(ctx(), cur)).To(Succeed())
	}).Should(Succeed())
}

func providerStatus(obj client.Object, status func() *kmsv1alpha1.KmsProviderStatus) func(Gomega) *kmsv1alpha1.KmsProviderStatus {
	return func(g Gomega) *kmsv1alpha1.KmsProviderStatus {
		g.Expect(k8sClient.Get(ctx(), client.ObjectKeyFromObject(obj), obj)).To(Succeed())
		return status()
	}
}

var _ = Describe("Providers", func() {
	It("lets the namespaces a ClusterKmsProvider allows use it, and follows their labels at once", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB))
		label := "team-" + f.Namespace
		p := sharedProvider(f, label)
		in1, in2 := f.Tenant(map[string]string{label: "yes"}), f.Tenant(map[string]string{label: "yes"})
		out := f.Tenant(map[string]string{label: "no"})
		var sels []*kmsv1alpha1.KmsKeySelector
		for _, t := range []*testkit.Fixture{in1, in2, out} {
			sels = append(sels, t.Create(t.Selector("keys", referTo(kmsv1alpha1.KindClusterKmsProvider, p.Name))))
		}
		for _, s := range sels[:2] {
			Eventually(f.ReadyReason(s)).Should(Equal(kmsv1alpha1.ReasonSynced))
		}
		Eventually(f.ReadyReason(sels[2])).Should(Equal(kmsv1alpha1.ReasonProviderNotAllowed))
		msg := testkit.ReadyCondition(f.Get(sels[2])(Default)).Message
		Expect(msg).To(ContainSubstring(fmt.Sprintf("ClusterKmsProvider %q does not allow namespace %q", p.Name, out.Namespace)))
		Expect(msg).To(ContainSubstring("spec.conditions"))
		Expect(msg).NotTo(ContainSubstring(f.Token))
		listed := f.FilterCalls()
		Expect(listed).To(BeNumerically("<=", 2), "the two allowed selectors ask the same question")
		Expect(k8sClient.Get(ctx(), types.NamespacedName{Namespace: out.Namespace, Name: "keys"}, &corev1.ConfigMap{})).
			To(Satisfy(apierrors.IsNotFound), "the refused selector wrote a ConfigMap")

		By("relabelling the refused namespace")
		setLabels(out.Namespace, map[string]string{label: "yes"})
		Eventually(f.ReadyReason(sels[2])).Should(Equal(kmsv1alpha1.ReasonSynced))

		By("relabelling an allowed namespace away")
		before := in1.ConfigMap("keys")(Default)
		setLabels(in1.Namespace, nil)
		Eventually(f.ReadyReason(sels[0])).Should(Equal(kmsv1alpha1.ReasonProviderNotAllowed))
		Expect(in1.ConfigMap("keys")(Default).ResourceVersion).To(Equal(before.ResourceVersion), "the ConfigMap keeps its content")

		Eventually(providerStatus(p, func() *kmsv1alpha1.KmsProviderStatus { return &p.Status })).Should(And(
			HaveField("Selectors", int32(2)), // the namespaces it allows
			HaveField("Conditions", ContainElement(HaveField("Reason", kmsv1alpha1.ReasonValidated))),
		))
	})

	It("refuses a provider that does not exist, and stops when it is deleted, keeping the data", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		sel := f.Create(f.Selector("ref", referTo(kmsv1alpha1.KindKmsProvider, "team")))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonProviderNotFound))
		Expect(testkit.ReadyCondition(f.Get(sel)(Default)).Message).To(ContainSubstring(`KmsProvider "team"`))
		Expect(f.FilterCalls()).To(BeZero())

		p := kmsProvider(f.Namespace, "team", f.KMS.URL, testkit.CredentialsSecretName)
		Expect(k8sClient.Create(ctx(), p)).To(Succeed())
		Eventually(f.States("ref")).Should(Equal(testkit.StatesOf(keyA)))
		before := f.ConfigMap("ref")(Default)

		Expect(k8sClient.Delete(ctx(), p)).To(Succeed())
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonProviderNotFound))
		Expect(f.ConfigMap("ref")(Default).ResourceVersion).To(Equal(before.ResourceVersion))
	})

	It("heals its selectors at once when an admin fixes the provider, and moves them with it", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		p := kmsProvider(f.Namespace, "team", strings.Replace(f.KMS.URL, "https://", "http://", 1), testkit.CredentialsSecretName)
		Expect(k8sClient.Create(ctx(), p)).To(Succeed())
		sel := f.Create(f.Selector("healed", referTo(kmsv1alpha1.KindKmsProvider, p.Name), testkit.WithRefreshInterval(time.Hour)))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonInsecureEndpoint))
		setEndpoint := func(endpoint string) {
			Eventually(func(g Gomega) {
				g.Expect(k8sClient.Get(ctx(), client.ObjectKeyFromObject(p), p)).To(Succeed())
				p.Spec.Endpoint = endpoint
				g.Expect(k8sClient.Update(ctx(), p)).To(Succeed())
			}).Should(Succeed())
		}

		By("fixing the provider's endpoint, with no change to the selector")
		setEndpoint(f.KMS.URL)
		Eventually(f.States("healed")).Should(Equal(testkit.StatesOf(keyA)))
		Expect(f.Get(sel)(Default).Status.LastHandledForceSync).To(BeEmpty(), "no force-sync was needed")

		By("moving the provider to another KMS, well before the selector's next refresh")
		moved := testkit.NewEmulator(f.Token, kmstest.WithKeys(keyB))
		DeferCleanup(moved.Close)
		setEndpoint(moved.URL)
		Eventually(f.States("healed")).Should(Equal(testkit.StatesOf(keyB)))
		Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonSynced))
	})

	It("validates a provider with one count call, and reports credentials KMS refuses", func() {
		f := newFixture()
		f.PutSecret("wrong", map[string]string{kmsv1alpha1.SecretToken: "not-" + f.Token})
		p := kmsProvider(f.Namespace, "checked", f.KMS.URL, "wrong")
		Expect(k8sClient.Create(ctx(), p)).To(Succeed())
		Eventually(providerStatus(p, func() *kmsv1alpha1.KmsProviderStatus { return &p.Status })).
			Should(HaveField("Conditions", ContainElement(HaveField("Reason", kmsv1alpha1.ReasonCredentialsInvalid))))
		Expect(f.KMS.Stats().ByStatus[403]).To(BeNumerically(">=", 1))
		calls := f.KMS.Stats().Total

		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx(), client.ObjectKeyFromObject(p), p)).To(Succeed())
			p.Spec.Auth.SecretRef.Name = testkit.CredentialsSecretName
			g.Expect(k8sClient.Update(ctx(), p)).To(Succeed())
		}).Should(Succeed())
		Eventually(providerStatus(p, func() *kmsv1alpha1.KmsProviderStatus { return &p.Status })).
			Should(HaveField("Conditions", ContainElement(HaveField("Reason", kmsv1alpha1.ReasonValidated))))
		Expect(f.KMS.Stats().Total).To(Equal(calls+1), "one count call validates the changed provider")
	})

	It("revalidates a provider its selectors use once an interval, for free when they listed through it", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		p := kmsProvider(f.Namespace, "used", f.KMS.URL, testkit.CredentialsSecretName)
		Expect(k8sClient.Create(ctx(), p)).To(Succeed())
		status := providerStatus(p, func() *kmsv1alpha1.KmsProviderStatus { return &p.Status })
		Eventually(status).Should(HaveField("Conditions", ContainElement(HaveField("Reason", kmsv1alpha1.ReasonValidated))))
		sel := f.Create(f.Selector("user", referTo(kmsv1alpha1.KindKmsProvider, p.Name), testkit.WithRefreshInterval(time.Hour)))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Eventually(status).Should(HaveField("Selectors", int32(1)))
		counted := f.KMS.Stats().ByAction[kmstest.ActionCount]

		By("making the provider's validation due: its last one was more than an interval ago")
		stale := metav1.NewTime(time.Now().Add(-2 * time.Hour))
		Expect(k8sClient.Status().Patch(ctx(), p, client.RawPatch(types.MergePatchType,
			[]byte(fmt.Sprintf(`{"status":{"lastValidationTime":%q}}`, stale.UTC().Format(time.RFC3339)))))).To(Succeed())
		Expect(k8sClient.Patch(ctx(), p, client.RawPatch(types.MergePatchType,
			[]byte(`{"metadata":{"annotations":{"test.kms.keysync.dev/poke":"1"}}}`)))).To(Succeed())
		Eventually(func(g Gomega) time.Time { return status(g).LastValidationTime.Time }).Should(BeTemporally(">", stale.Time))
		Expect(f.KMS.Stats().ByAction[kmstest.ActionCount]).To(Equal(counted), "the selector's listing within the interval proved the credentials")
		Expect(meta.FindStatusCondition(status(Default).Conditions, kmsv1alpha1.ConditionReady).Message).To(ContainSubstring("for 1 selector(s)"))
	})

	It("counts a selector that moves to another provider under the new one only", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		var providers []*kmsv1alpha1.KmsProvider
		for _, name := range []string{"old", "new"} {
			p := kmsProvider(f.Namespace, name, f.KMS.URL, testkit.CredentialsSecretName)
			Expect(k8sClient.Create(ctx(), p)).To(Succeed())
			providers = append(providers, p)
		}
		selectors := func(p *kmsv1alpha1.KmsProvider) func(Gomega) int32 {
			return func(g Gomega) int32 {
				return providerStatus(p, func() *kmsv1alpha1.KmsProviderStatus { return &p.Status })(g).Selectors
			}
		}
		sel := f.Create(f.Selector("mover", referTo(kmsv1alpha1.KindKmsProvider, "old")))
		Eventually(selectors(providers[0])).Should(Equal(int32(1)))
		Eventually(func(g Gomega) {
			cur := f.Get(sel)(g)
			cur.Spec.ProviderRef.Name = "new"
			g.Expect(k8sClient.Update(ctx(), cur)).To(Succeed())
		}).Should(Succeed())
		Eventually(selectors(providers[1])).Should(Equal(int32(1)))
		Eventually(selectors(providers[0])).Should(BeZero())
	})

	It("serves 100 selectors in 10 namespaces that share a provider and a filter with one listing a refresh", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB, keyC))
		label := "team-" + f.Namespace
		p := sharedProvider(f, label)
		var sels []*kmsv1alpha1.KmsKeySelector
		for range 10 {
			t := f.Tenant(map[string]string{label: "yes"})
			for i := range 10 {
				sels = append(sels, t.Create(t.Selector(fmt.Sprintf("s%d", i), referTo(kmsv1alpha1.KindClusterKmsProvider, p.Name),
					testkit.WithTags(testkit.Tag("team", "payments")), testkit.WithRefreshInterval(time.Hour))))
			}
		}
		for _, s := range sels {
			Eventually(f.ReadyReason(s), time.Minute).Should(Equal(kmsv1alpha1.ReasonSynced))
		}
		first := f.FilterCalls()
		AddReportEntry("listings for the first sync of 100 selectors sharing a ClusterKmsProvider", first)

		By("making the refresh of all 100 due at one slot, after the first listing")
		// The status stores whole seconds: the slot is the next one, so that the first listing
		// was made before it.
		slot := metav1.NewTime(time.Now().Add(time.Second).Truncate(time.Second))
		time.Sleep(time.Until(slot.Time))
		for i, s := range sels {
			Expect(k8sClient.Status().Patch(ctx(), s, client.RawPatch(types.MergePatchType,
				[]byte(fmt.Sprintf(`{"status":{"nextSyncTime":%q}}`, slot.UTC().Format(time.RFC3339)))))).To(Succeed())
			Expect(k8sClient.Patch(ctx(), s, client.RawPatch(types.MergePatchType,
				[]byte(fmt.Sprintf(`{"metadata":{"annotations":{"test.kms.keysync.dev/poke":"%d"}}}`, i))))).To(Succeed())
		}
		for _, s := range sels {
			// A successful refresh clears the time, as a Synced selector follows its slot.
			Eventually(func(g Gomega) *metav1.Time { return f.Get(s)(g).Status.NextSyncTime }, time.Minute).Should(BeNil())
		}
		Expect(f.FilterCalls()).To(Equal(first+1), "one listing for the refresh of all 100 selectors")
	})

	It("gives every selector a rotated Secret at once with force-sync", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		label := "team-" + f.Namespace
		p := sharedProvider(f, label)
		var sels []*kmsv1alpha1.KmsKeySelector
		for range 3 {
			t := f.Tenant(map[string]string{label: "yes"})
			sels = append(sels, t.Create(t.Selector("keys", referTo(kmsv1alpha1.KindClusterKmsProvider, p.Name), testkit.WithRefreshInterval(time.Hour))))
		}
		for _, s := range sels {
			Eventually(f.ReadyReason(s)).Should(Equal(kmsv1alpha1.ReasonSynced))
		}
		rotated := "rotated-" + f.Token
		f.KMS.AddToken(rotated)
		f.KMS.RemoveToken(f.Token)
		f.PutCredentials(map[string]string{kmsv1alpha1.SecretToken: rotated})
		f.KMS.ResetStats()
		for _, s := range sels {
			value := f.ForceSync(s)
			Eventually(func(g Gomega) {
				cur := f.Get(s)(g)
				g.Expect(cur.Status.LastHandledForceSync).To(Equal(value))
				g.Expect(testkit.ReadyCondition(cur).Reason).To(Equal(kmsv1alpha1.ReasonSynced))
			}).Should(Succeed())
		}
		Expect(f.KMS.Stats().ByStatus[403]).To(BeZero(), "a selector listed with the old token")
		Expect(f.FilterCalls()).To(BeNumerically(">=", 1))
	})

	It("refuses a selector that sets both or neither of provider and providerRef, naming both", func() {
		f := newFixture()
		both := f.Selector("both", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.ProviderRef = &kmsv1alpha1.ProviderReference{Kind: kmsv1alpha1.KindKmsProvider, Name: "x"}
		})
		neither := f.Selector("neither", func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.Provider = nil })
		for _, s := range []*kmsv1alpha1.KmsKeySelector{both, neither} {
			Expect(k8sClient.Create(ctx(), s)).To(MatchError(ContainSubstring("set exactly one of spec.provider and spec.providerRef")))
		}
	})

	Context("as a namespace user", func() {
		var (
			f    *testkit.Fixture
			user client.Client
		)
		BeforeEach(func() {
			f = newFixture(kmstest.WithKeys(keyA))
			var err error
			user, err = env.NamespaceEditor(ctx(), f.Namespace)
			Expect(err).NotTo(HaveOccurred())
		})

		It("cannot use a ClusterKmsProvider whose conditions exclude the namespace", func() {
			p := sharedProvider(f, "never-"+f.Namespace)
			sel := f.Selector("borrow", referTo(kmsv1alpha1.KindClusterKmsProvider, p.Name))
			Eventually(func() error { return user.Create(ctx(), sel) }).Should(Succeed())
			Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonProviderNotAllowed))
			Expect(f.FilterCalls()).To(BeZero(), "listings")
			Expect(testkit.ReadyCondition(f.Get(sel)(Default)).Message).NotTo(ContainSubstring(f.Token))
		})

		It("cannot name a KmsProvider of another namespace, nor a Secret of another namespace", func() {
			other := newFixture(kmstest.WithKeys(keyA))
			Expect(k8sClient.Create(ctx(), kmsProvider(other.Namespace, "theirs", other.KMS.URL, testkit.CredentialsSecretName))).To(Succeed())
			strict := client.WithFieldValidation(user, metav1.FieldValidationStrict)

			ref := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": kmsv1alpha1.GroupVersion.String(), "kind": "KmsKeySelector",
				"metadata": map[string]any{"name": "cross", "namespace": f.Namespace},
				"spec":     map[string]any{"providerRef": map[string]any{"kind": "KmsProvider", "name": "theirs", "namespace": other.Namespace}},
			}}
			Eventually(func() error { return strict.Create(ctx(), ref) }).Should(MatchError(ContainSubstring(`unknown field "spec.providerRef.namespace"`)))

			own := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": kmsv1alpha1.GroupVersion.String(), "kind": "KmsProvider",
				"metadata": map[string]any{"name": "borrowed", "namespace": f.Namespace},
				"spec": map[string]any{"projectId": kmstest.DefaultProjectID, "endpoint": other.KMS.URL,
					"auth": map[string]any{"secretRef": map[string]any{"name": testkit.CredentialsSecretName, "namespace": other.Namespace}}},
			}}
			Expect(strict.Create(ctx(), own)).To(MatchError(ContainSubstring(`unknown field "spec.auth.secretRef.namespace"`)))

			sel := f.Selector("same-name", referTo(kmsv1alpha1.KindKmsProvider, "theirs"))
			Expect(user.Create(ctx(), sel)).To(Succeed())
			Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonProviderNotFound))
			Expect(other.FilterCalls()).To(BeZero(), "listings with the other namespace's credentials")
		})

		It("cannot create a ClusterKmsProvider", func() {
			p := &kmsv1alpha1.ClusterKmsProvider{
				ObjectMeta: metav1.ObjectMeta{Name: "mine-" + f.Namespace},
				Spec: kmsv1alpha1.ClusterKmsProviderSpec{
					KMSLocation: kmsv1alpha1.KMSLocation{ProjectID: kmstest.DefaultProjectID, Endpoint: f.KMS.URL},
					Auth:        kmsv1alpha1.ClusterKmsProviderAuth{SecretRef: &kmsv1alpha1.ClusterSecretReference{Name: "x", Namespace: clusterResourceNamespace}},
				},
			}
			Expect(user.Create(ctx(), p)).To(Satisfy(apierrors.IsForbidden))
		})
	})
})
