package controllers_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/identity"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/iamtest"
)

// credentialLifetime is short enough for a spec to outlive several credentials.
const credentialLifetime = 4 * time.Second

// startIAM starts an IAM emulator that trusts the cluster's service account issuer, and whose
// credentials the KMS emulators accept; it returns the emulator and its URL.
func startIAM(trusted ...*kmstest.Server) (*iamtest.IAM, string) {
	GinkgoHelper()
	iam, srv, err := testkit.StartIAM(ctx(), env.Config, trusted...)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(srv.Close)
	return iam, srv.URL
}

// keylessProvider is a KmsProvider of f's emulator that acts as a service account of f's
// namespace.
func keylessProvider(f *testkit.Fixture, name, serviceAccount, iamURL string) *kmsv1alpha1.KmsProvider {
	GinkgoHelper()
	p := &kmsv1alpha1.KmsProvider{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.Namespace},
		Spec: kmsv1alpha1.KmsProviderSpec{
			KMSLocation: kmsv1alpha1.KMSLocation{ProjectID: f.KMS.ProjectID(), Endpoint: f.KMS.URL},
			Auth:        kmsv1alpha1.KmsProviderAuth{WorkloadIdentity: testkit.WorkloadIdentity(serviceAccount, iamURL)},
		},
	}
	Expect(k8sClient.Create(ctx(), p)).To(Succeed())
	return p
}

// clusterKeyless is a ClusterKmsProvider of f's emulator with the given authentication.
func clusterKeyless(f *testkit.Fixture, auth kmsv1alpha1.ClusterKmsProviderAuth) *kmsv1alpha1.ClusterKmsProvider {
	GinkgoHelper()
	p := &kmsv1alpha1.ClusterKmsProvider{
		ObjectMeta: metav1.ObjectMeta{Name: "keyless-" + f.Namespace},
		Spec: kmsv1alpha1.ClusterKmsProviderSpec{
			KMSLocation: kmsv1alpha1.KMSLocation{ProjectID: f.KMS.ProjectID(), Endpoint: f.KMS.URL},
			Auth:        auth,
			Conditions:  []kmsv1alpha1.ClusterKmsProviderCondition{{Namespaces: []string{f.Namespace}}},
		},
	}
	Expect(k8sClient.Create(ctx(), p)).To(Succeed())
	DeferCleanup(func() { _ = k8sClient.Delete(ctx(), p) })
	return p
}

// federated returns a fixture without Secrets that holds keys, its service account, and an IAM
// emulator whose rule lets the service account list the fixture's project, with its URL.
func federated(serviceAccount string, keys ...kms.Key) (*testkit.Fixture, *iamtest.IAM, string) {
	GinkgoHelper()
	f := newFixture(kmstest.WithKeys(keys...))
	f.DeleteSecrets()
	iam, iamURL := startIAM(f.KMS)
	f.ServiceAccount(serviceAccount, testkit.TokenAudience)
	iam.Allow(testkit.IdentityProviderID, testkit.ServiceAccountSubject(f.Namespace, serviceAccount), f.KMS.ProjectID())
	return f, iam, iamURL
}

// syncedAsOperator returns a fixture without Secrets, and a selector synced through a
// ClusterKmsProvider that lists as one of the operator's own identities, which grant gives the
// fixture's project, with short-lived credentials.
func syncedAsOperator(name string, auth kmsv1alpha1.ClusterKmsProviderAuth, grant func(project string)) (*testkit.Fixture, *kmsv1alpha1.KmsKeySelector) {
	GinkgoHelper()
	f := newFixture(kmstest.WithKeys(keyA))
	f.DeleteSecrets()
	agencyIAM.Trust(f.KMS.Emulator)
	agencyIAM.SetCredentialLifetime(credentialLifetime)
	grant(f.KMS.ProjectID())
	p := clusterKeyless(f, auth)
	sel := f.Create(f.Selector(name, referTo(kmsv1alpha1.KindClusterKmsProvider, p.Name)))
	Eventually(f.States(name)).Should(Equal(testkit.StatesOf(keyA)))
	return f, sel
}

func secretsIn(namespace string) int {
	GinkgoHelper()
	list := &corev1.SecretList{}
	Expect(k8sClient.List(ctx(), list, client.InNamespace(namespace))).To(Succeed())
	return len(list.Items)
}

// outliveCredentials waits until credentials issued now have expired. It orders the spec
// against the credentials' clock; it does not wait for the operator.
func outliveCredentials() { time.Sleep(credentialLifetime + 500*time.Millisecond) }

// readyMessage is the message of the selector's Ready condition.
func readyMessage(f *testkit.Fixture, sel *kmsv1alpha1.KmsKeySelector) string {
	GinkgoHelper()
	return testkit.ReadyCondition(f.Get(sel)(Default)).Message
}

var _ = Describe("Keyless credentials", func() {
	It("lists through a workload identity: a token the API server signed, verified by IAM against the cluster's JWKS, and no Secret", func() {
		f, iam, iamURL := federated("kms-reader", keyA, keyB)

		p := keylessProvider(f, "keyless", "kms-reader", iamURL)
		byRef := f.Create(f.Selector("by-ref", referTo(kmsv1alpha1.KindKmsProvider, p.Name)))
		inline := f.Create(f.Selector("inline", testkit.WithWorkloadIdentity("kms-reader", iamURL)))
		for _, name := range []string{byRef.Name, inline.Name} {
			Eventually(f.States(name)).Should(Equal(testkit.StatesOf(keyA, keyB)))
		}
		Eventually(providerStatus(p, func() *kmsv1alpha1.KmsProviderStatus { return &p.Status })).
			Should(HaveField("Conditions", ContainElement(HaveField("Reason", kmsv1alpha1.ReasonValidated))))

		Expect(iam.Stats().IDTokenExchanges).To(Equal(int64(1)), "the provider and both selectors share one identity")
		Expect(iam.Stats().IDTokenRefusals).To(BeZero())
		Expect(f.KMS.Requests()).To(HaveEach(HaveField("Auth", kmstest.AuthAKSK)), "KMS requests are signed with temporary AK/SK")
		Expect(secretsIn(f.Namespace)).To(BeZero(), "no Secret holds a credential")
	})

	It("keeps two namespaces' identities apart, even with identical filters", func() {
		a := newFixture(kmstest.WithKeys(keyA))
		b := newFixture(kmstest.WithProjectID("project-b"), kmstest.WithKeys(keyB))
		iam, iamURL := startIAM(a.KMS, b.KMS)
		var sels []*kmsv1alpha1.KmsKeySelector
		for _, f := range []*testkit.Fixture{a, b} {
			f.DeleteSecrets()
			f.ServiceAccount("reader", testkit.TokenAudience)
			iam.Allow(testkit.IdentityProviderID, testkit.ServiceAccountSubject(f.Namespace, "reader"), f.KMS.ProjectID())
			p := keylessProvider(f, "team", "reader", iamURL)
			sels = append(sels, f.Create(f.Selector("keys", referTo(kmsv1alpha1.KindKmsProvider, p.Name), testkit.WithTags(testkit.Tag("env", "prod")))))
		}
		Eventually(a.States("keys")).Should(Equal(testkit.StatesOf(keyA)))
		Eventually(b.States("keys")).Should(Equal(testkit.StatesOf(keyB)))
		Expect(iam.Stats().IDTokenExchanges).To(Equal(int64(2)), "one exchange per identity")

		By("pointing namespace b at project a, which b's identity may not list")
		// The exchange is unscoped, as the SDK's: IAM's conversion rule gives b's credentials
		// project b only, and project a's KMS refuses them.
		other := b.Create(b.Selector("other", testkit.WithWorkloadIdentity("reader", iamURL), func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.Provider.ProjectID = a.KMS.ProjectID()
			s.Spec.Provider.Endpoint = a.KMS.URL
		}))
		Eventually(b.ReadyReason(other)).Should(Equal(kmsv1alpha1.ReasonCredentialsInvalid))
		msg := readyMessage(b, other)
		Expect(msg).To(ContainSubstring("403"))
		Expect(msg).NotTo(ContainSubstring("eyJ"), "the message carries no JWT")
		Expect(b.Warnings(other)(Default)).To(ContainElement(HaveField("Reason", kmsv1alpha1.ReasonCredentialsInvalid)))
		Expect(a.ReadyReason(sels[0])(Default)).To(Equal(kmsv1alpha1.ReasonSynced))

		By("letting a third namespace's service account into project a, with a's very filter")
		c := a.Tenant(nil)
		c.ServiceAccount("reader", testkit.TokenAudience)
		iam.Allow(testkit.IdentityProviderID, testkit.ServiceAccountSubject(c.Namespace, "reader"), a.KMS.ProjectID())
		third := c.Create(c.Selector("keys", testkit.WithWorkloadIdentity("reader", iamURL), testkit.WithTags(testkit.Tag("env", "prod"))))
		Eventually(c.States("keys")).Should(Equal(testkit.StatesOf(keyA)))
		settle(Default, a, sels[0])
		settle(Default, c, third)
		signers := map[string]bool{}
		for _, r := range a.KMS.Requests() {
			if r.Action == kmstest.ActionFilter && r.Status == http.StatusOK {
				signers[r.AccessKey] = true
			}
		}
		Expect(signers).To(HaveLen(2), "each identity lists with its own credentials: no listing is shared across identities")
	})

	It("shares one identity's credentials between 100 selectors", func() {
		f, iam, iamURL := federated("shared", keyA)
		p := keylessProvider(f, "shared", "shared", iamURL)
		first := f.Create(f.Selector("sel-0", referTo(kmsv1alpha1.KindKmsProvider, p.Name)))
		Eventually(f.ReadyReason(first)).Should(Equal(kmsv1alpha1.ReasonSynced))
		exchanges := iam.Stats().IDTokenExchanges

		var sels []*kmsv1alpha1.KmsKeySelector
		for i := 1; i < 100; i++ {
			sels = append(sels, f.Create(f.Selector(fmt.Sprintf("sel-%d", i), referTo(kmsv1alpha1.KindKmsProvider, p.Name))))
		}
		for _, s := range sels {
			Eventually(f.ReadyReason(s)).Should(Equal(kmsv1alpha1.ReasonSynced))
		}
		Expect(iam.Stats().IDTokenExchanges).To(Equal(exchanges), "99 more selectors of the identity cost no exchange")
	})

	It("reports a revoked identity with IdentityExchangeFailed, keeps the data, and recovers when the rule returns", func() {
		f, iam, iamURL := federated("revoked", keyA)
		iam.SetCredentialLifetime(credentialLifetime)
		sub := testkit.ServiceAccountSubject(f.Namespace, "revoked")
		sel := f.Create(f.Selector("revoked", testkit.WithWorkloadIdentity("revoked", iamURL)))
		Eventually(f.States("revoked")).Should(Equal(testkit.StatesOf(keyA)))
		before := f.ConfigMap("revoked")(Default)
		refreshes := func(outcome string) float64 {
			return testkit.Scrape(metricsURL)(Default).Sum("kms_key_sync_credential_refreshes_total",
				map[string]string{"method": "workload_identity", "outcome": outcome})
		}
		succeeded, failed := refreshes("success"), refreshes("failure")
		Expect(succeeded).To(BeNumerically(">=", 1))

		iam.Revoke(testkit.IdentityProviderID, sub)
		outliveCredentials()
		f.RefreshNow(sel)
		Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonIdentityExchangeFailed))
		Expect(readyMessage(f, sel)).To(And(ContainSubstring("IAM id-token exchange answered 403"), ContainSubstring("conversion rule")))
		calls := f.KMS.Stats().Total
		awaitRetry(Default, f, sel)
		Expect(f.KMS.Stats().Total).To(Equal(calls), "no KMS call while the exchange fails")
		Expect(f.ConfigMap("revoked")(Default).ResourceVersion).To(Equal(before.ResourceVersion), "the data is kept")
		Expect(refreshes("failure")).To(BeNumerically(">=", failed+2), "both failed attempts are counted")

		iam.Allow(testkit.IdentityProviderID, sub, f.KMS.ProjectID())
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(refreshes("success")).To(BeNumerically(">", succeeded))
	})

	It("reports a missing service account and a refused token by name", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		iam, iamURL := startIAM(f.KMS)
		iam.Allow(testkit.IdentityProviderID, testkit.ServiceAccountSubject(f.Namespace, "later"), f.KMS.ProjectID())
		sel := f.Create(f.Selector("missing-sa", testkit.WithWorkloadIdentity("later", iamURL)))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonIdentityExchangeFailed))
		Expect(readyMessage(f, sel)).To(ContainSubstring(`service account "later" does not exist in namespace "` + f.Namespace + `"`))
		Expect(iam.Stats().IDTokenExchanges + iam.Stats().IDTokenRefusals).To(BeZero())

		By("asking for an audience the identity provider does not expect")
		f.ServiceAccount("later", testkit.TokenAudience, "someone-else")
		Eventually(func(g Gomega) {
			cur := f.Get(sel)(g)
			cur.Spec.Provider.WorkloadIdentity.ServiceAccountRef.Audiences = []string{"someone-else"}
			g.Expect(k8sClient.Update(ctx(), cur)).To(Succeed())
		}).Should(Succeed())
		Eventually(func(g Gomega) string {
			f.Handled(sel)(g)
			return testkit.ReadyCondition(f.Get(sel)(g)).Message
		}).Should(And(ContainSubstring("answered 401"), ContainSubstring("someone-else"), ContainSubstring("client ID")))

		By("the audience the identity provider expects")
		Eventually(func(g Gomega) {
			cur := f.Get(sel)(g)
			cur.Spec.Provider.WorkloadIdentity.ServiceAccountRef.Audiences = []string{testkit.TokenAudience}
			g.Expect(k8sClient.Update(ctx(), cur)).To(Succeed())
		}).Should(Succeed())
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
	})

	It("lists with the node's agency from the metadata service, refreshes it as it expires, and names a node without one", func() {
		f, sel := syncedAsOperator("node", kmsv1alpha1.ClusterKmsProviderAuth{NodeAgency: &kmsv1alpha1.NodeAgency{}}, func(project string) {
			agencyIAM.SetNodeAgency(project)
		})
		issued := agencyIAM.Stats().MetadataCredentials

		By("outliving the credentials")
		outliveCredentials()
		f.RefreshNow(sel)
		Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonSynced))
		Expect(agencyIAM.Stats().MetadataCredentials).To(Equal(issued+1), "expired credentials are replaced once")

		By("taking the node's agency away")
		before := f.ConfigMap("node")(Default)
		agencyIAM.SetNodeAgency()
		outliveCredentials()
		f.RefreshNow(sel)
		Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonIdentityExchangeFailed))
		Expect(readyMessage(f, sel)).To(And(ContainSubstring("spec.auth.nodeAgency"), ContainSubstring("the node has no IAM agency")))
		Expect(f.ConfigMap("node")(Default).ResourceVersion).To(Equal(before.ResourceVersion))

		agencyIAM.SetNodeAgency(f.KMS.ProjectID())
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
	})

	It("mints tokens as the operator with exactly the configured audiences, for 10 minutes", func() {
		f := newFixture()
		f.ServiceAccount("minted", testkit.TokenAudience)
		operatorClient, err := client.New(env.OperatorConfig, client.Options{Scheme: k8sClient.Scheme()})
		Expect(err).NotTo(HaveOccurred())
		jwt, err := identity.ServiceAccountTokens{Client: operatorClient, Reader: operatorClient}.ServiceAccountToken(ctx(), f.Namespace, "minted",
			[]string{testkit.TokenAudience}, identity.ServiceAccountTokenLifetime)
		Expect(err).NotTo(HaveOccurred(), "the generated RBAC lets the operator read the service account, mint the token and review it")
		payload, err := base64.RawURLEncoding.DecodeString(strings.Split(jwt, ".")[1])
		Expect(err).NotTo(HaveOccurred())
		var claims struct {
			Sub string   `json:"sub"`
			Aud []string `json:"aud"`
			Iat int64    `json:"iat"`
			Exp int64    `json:"exp"`
		}
		Expect(json.Unmarshal(payload, &claims)).To(Succeed())
		Expect(claims.Sub).To(Equal(testkit.ServiceAccountSubject(f.Namespace, "minted")))
		Expect(claims.Aud).To(Equal([]string{testkit.TokenAudience}))
		Expect(time.Duration(claims.Exp-claims.Iat) * time.Second).To(Equal(10 * time.Minute))
	})

	It("offers the node's and the operator's identities on ClusterKmsProvider only", func() {
		ns := newFixture().Namespace
		for _, method := range []string{"nodeAgency", "podIdentity"} {
			p := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": kmsv1alpha1.GroupVersion.String(), "kind": kmsv1alpha1.KindKmsProvider,
				"metadata": map[string]any{"name": "borrow", "namespace": ns},
				"spec": map[string]any{
					"projectId": kmstest.DefaultProjectID, "region": "cn-north-4",
					"auth": map[string]any{method: map[string]any{}},
				},
			}}
			err := k8sClient.Create(ctx(), p, client.FieldValidation(metav1.FieldValidationStrict))
			Expect(err).To(MatchError(ContainSubstring(`unknown field "spec.auth.` + method + `"`)))
		}
		By("naming a service account of another namespace from a KmsProvider")
		other := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": kmsv1alpha1.GroupVersion.String(), "kind": kmsv1alpha1.KindKmsProvider,
			"metadata": map[string]any{"name": "borrow", "namespace": ns},
			"spec": map[string]any{
				"projectId": kmstest.DefaultProjectID, "region": "cn-north-4",
				"auth": map[string]any{"workloadIdentity": map[string]any{
					"serviceAccountRef":  map[string]any{"name": "sa", "namespace": clusterResourceNamespace, "audiences": []any{"a"}},
					"identityProviderId": "idp",
				}},
			},
		}}
		Expect(k8sClient.Create(ctx(), other, client.FieldValidation(metav1.FieldValidationStrict))).
			To(MatchError(ContainSubstring(`unknown field "spec.auth.workloadIdentity.serviceAccountRef.namespace"`)))
		both := &kmsv1alpha1.ClusterKmsProvider{
			ObjectMeta: metav1.ObjectMeta{Name: "two-methods-" + ns},
			Spec: kmsv1alpha1.ClusterKmsProviderSpec{
				KMSLocation: kmsv1alpha1.KMSLocation{ProjectID: kmstest.DefaultProjectID, Region: "cn-north-4"},
				Auth: kmsv1alpha1.ClusterKmsProviderAuth{
					NodeAgency:  &kmsv1alpha1.NodeAgency{},
					PodIdentity: &kmsv1alpha1.PodIdentity{},
				},
			},
		}
		Expect(k8sClient.Create(ctx(), both)).To(MatchError(ContainSubstring("set exactly one authentication method in spec.auth")))
		inline := testkit.Selector(ns, "both", "https://kms.example", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.Provider.WorkloadIdentity = testkit.WorkloadIdentity("sa", "https://iam.example")
		})
		Expect(k8sClient.Create(ctx(), inline)).To(MatchError(ContainSubstring("set exactly one of spec.provider.workloadIdentity and spec.provider.credentialsSecretRef")))
		noAudience := testkit.Selector(ns, "no-audience", "https://kms.example", testkit.WithWorkloadIdentity("sa", "https://iam.example"), func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.Provider.WorkloadIdentity.ServiceAccountRef.Audiences = nil
		})
		Expect(k8sClient.Create(ctx(), noAudience)).To(MatchError(ContainSubstring("spec.provider.workloadIdentity.serviceAccountRef.audiences")))
	})
})
