package controllers_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// tenant is a team that holds only the editor roles of selectors and KmsProviders in its
// namespace, and an IAM emulator that trusts the cluster and the team's KMS.
type tenant struct {
	f      *testkit.Fixture
	user   client.Client
	iam    *kmstest.IAM
	iamURL string
}

// create creates obj as the tenant's user.
func (t *tenant) create(obj client.Object) {
	GinkgoHelper()
	Eventually(func() error { return t.user.Create(ctx(), obj) }).Should(Succeed(), "as the namespace user")
}

// selector creates, as the tenant's user, a selector of the tenant's KMS.
func (t *tenant) selector(name string, mutate ...func(*kmsv1alpha1.KmsKeySelector)) *kmsv1alpha1.KmsKeySelector {
	GinkgoHelper()
	sel := t.f.Selector(name, mutate...)
	t.create(sel)
	deleteSelectorAtCleanup(sel)
	return sel
}

// attack is one row of the hostile tenant table: run sets the stage as an admin would, attacks
// as the tenant's user and returns the selector the operator must refuse, with leaked, which
// counts what reached a place a credential must not go; the refusal's reason and what its
// message says are the row's. A row whose refusal comes after a listing of the tenant's own
// KMS sets mayList.
type attack struct {
	run     func(t *tenant) (sel *kmsv1alpha1.KmsKeySelector, leaked func() int64)
	reason  string
	says    []string
	mayList bool
}

// iamRequests counts every request that IAM answered on its id-token route: each carried a
// service account token.
func iamRequests(iam *kmstest.IAM) func() int64 {
	return func() int64 { st := iam.Stats(); return st.IDTokenExchanges + st.IDTokenRefusals }
}

var _ = Describe("A hostile tenant", func() {
	DescribeTable("is refused, while another tenant keeps syncing and none of its credentials is used",
		func(a attack) {
			f := newFixture(kmstest.WithKeys(keyA))
			f.DeleteSecrets()
			user, err := env.NamespaceEditor(ctx(), f.Namespace)
			Expect(err).NotTo(HaveOccurred())
			iam, iamURL := startIAM(f.KMS)
			t := &tenant{f: f, user: user, iam: iam, iamURL: iamURL}

			By("another tenant syncing with its own Secret")
			other := newFixture(kmstest.WithKeys(keyB))
			theirs := other.Create(other.Selector("theirs"))
			Eventually(other.States("theirs")).Should(Equal(testkit.StatesOf(keyB)))

			sel, leaked := a.run(t)
			Eventually(f.ReadyReason(sel)).Should(Equal(a.reason))
			msg := readyMessage(f, sel)
			for _, s := range a.says {
				Expect(msg).To(ContainSubstring(s))
			}
			// A later reconcile of the same selector is over: nothing the attack started is
			// still running.
			settle(Default, f, sel)
			Expect(f.ReadyReason(sel)(Default)).To(Equal(a.reason), "the refusal holds")
			Expect(leaked()).To(BeZero(), "a credential reached a place it must not")
			if !a.mayList {
				Expect(f.FilterCalls()).To(BeZero(), "the tenant listed KMS")
			}
			// Messages are shortened: a leaked token may show only in part, and every JWT starts
			// with eyJ.
			Expect(msg).NotTo(ContainSubstring("eyJ"), "the condition holds a JWT")
			for _, s := range append(iam.Secrets(), agencyIAM.Secrets()...) {
				Expect(msg).NotTo(ContainSubstring(s), "the condition holds a secret")
				for _, e := range f.Events(sel)(Default) {
					Expect(e.Note).NotTo(ContainSubstring(s), "an event holds a secret")
				}
			}

			By("the other tenant still syncing, with its own credentials only")
			calls := other.FilterCalls()
			settle(Default, other, theirs)
			Expect(other.ReadyReason(theirs)(Default)).To(Equal(kmsv1alpha1.ReasonSynced))
			Expect(other.FilterCalls()).To(BeNumerically(">", calls))
			Expect(other.KMS.Requests()).To(HaveEach(HaveField("Auth", kmstest.AuthToken)), "the other tenant's KMS saw only its own token")
		},

		Entry("1: a service account that has not opted in", attack{
			run: func(t *tenant) (*kmsv1alpha1.KmsKeySelector, func() int64) {
				t.f.ServiceAccount("app") // an application's, with no annotation
				t.iam.Allow(testkit.IdentityProviderID, testkit.ServiceAccountSubject(t.f.Namespace, "app"), t.f.KMS.ProjectID())
				p := &kmsv1alpha1.KmsProvider{
					ObjectMeta: metav1.ObjectMeta{Name: "borrowed", Namespace: t.f.Namespace},
					Spec: kmsv1alpha1.KmsProviderSpec{
						KMSLocation: kmsv1alpha1.KMSLocation{ProjectID: t.f.KMS.ProjectID(), Endpoint: t.f.KMS.URL},
						Auth:        kmsv1alpha1.KmsProviderAuth{WorkloadIdentity: testkit.WorkloadIdentity("app", t.iamURL)},
					},
				}
				t.create(p)
				return t.selector("borrow", referTo(kmsv1alpha1.KindKmsProvider, p.Name)), iamRequests(t.iam)
			},
			reason: kmsv1alpha1.ReasonIdentityExchangeFailed,
			says:   []string{`service account "app"`, "has not opted in", kmsv1alpha1.WorkloadIdentityAudiencesAnnotation},
		}),

		Entry("1: a token sent to a host outside --allowed-iam-hosts", attack{
			run: func(t *tenant) (*kmsv1alpha1.KmsKeySelector, func() int64) {
				t.f.ServiceAccount("reader", testkit.TokenAudience)
				var hits atomic.Int64
				collector := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
				DeferCleanup(collector.Close)
				u, err := url.Parse(collector.URL)
				Expect(err).NotTo(HaveOccurred())
				u.Host = "localhost:" + u.Port() // the same server, under a name the operator does not allow
				return t.selector("exfiltrate", testkit.WithWorkloadIdentity("reader", u.String())), hits.Load
			},
			reason: kmsv1alpha1.ReasonInvalidSpec,
			says:   []string{"is not an IAM host the operator sends service account tokens to", "--allowed-iam-hosts"},
		}),

		Entry("1: an audience the API server accepts, even one the service account allows", attack{
			run: func(t *tenant) (*kmsv1alpha1.KmsKeySelector, func() int64) {
				// k3s, one of the suite's --api-audiences, as on a k3s cluster.
				const audience = "k3s"
				Expect(apiAudiences).To(ContainElement(audience))
				t.f.ServiceAccount("careless", testkit.TokenAudience, audience)
				t.iam.Allow(testkit.IdentityProviderID, testkit.ServiceAccountSubject(t.f.Namespace, "careless"), t.f.KMS.ProjectID())
				return t.selector("impersonate", testkit.WithWorkloadIdentity("careless", t.iamURL), func(s *kmsv1alpha1.KmsKeySelector) {
					s.Spec.Provider.WorkloadIdentity.ServiceAccountRef.Audiences = []string{audience}
				}), iamRequests(t.iam)
			},
			reason: kmsv1alpha1.ReasonIdentityExchangeFailed,
			says:   []string{"the Kubernetes API server accepts a token", "never leaves the cluster"},
		}),

		Entry("2: an IAM answer too large to cache", attack{
			run: func(t *tenant) (*kmsv1alpha1.KmsKeySelector, func() int64) {
				t.f.ServiceAccount("reader", testkit.TokenAudience)
				t.iam.Allow(testkit.IdentityProviderID, testkit.ServiceAccountSubject(t.f.Namespace, "reader"), t.f.KMS.ProjectID())
				// Half a mebibyte: the size the operator used to read, and cache for as long as
				// IAM said.
				t.iam.SetSecurityTokenLength(512 << 10)
				t.iam.SetCredentialLifetime(100 * 365 * 24 * time.Hour)
				return t.selector("bloat", testkit.WithWorkloadIdentity("reader", t.iamURL)), func() int64 { return 0 }
			},
			reason: kmsv1alpha1.ReasonIdentityExchangeFailed,
			says:   []string{"IAM securitytokens", "longer than"},
		}),

		Entry("6: an endpoint that echoes the token JSON-escaped", attack{
			run: func(t *tenant) (*kmsv1alpha1.KmsKeySelector, func() int64) {
				t.f.ServiceAccount("reader", testkit.TokenAudience)
				t.iam.InjectFault(kmstest.IAMFault{Route: kmstest.IAMRouteIDToken, Status: http.StatusBadRequest, Echo: true})
				return t.selector("echo", testkit.WithWorkloadIdentity("reader", t.iamURL)), func() int64 { return 0 }
			},
			reason: kmsv1alpha1.ReasonIdentityExchangeFailed,
			says:   []string{"IAM id-token exchange answered 400", "the request carried [redacted]"},
		}),

		Entry("7: the operator's pod identity over plain http", attack{
			run: func(t *tenant) (*kmsv1alpha1.KmsKeySelector, func() int64) {
				agencyIAM.Trust(t.f.KMS.Emulator)
				agencyIAM.SetPodIdentity("pod-token-plain", t.f.KMS.ProjectID())
				Expect(os.WriteFile(podIdentityTokenFile, []byte("pod-token-plain\n"), 0o600)).To(Succeed())
				p := clusterKeyless(t.f, kmsv1alpha1.ClusterKmsProviderAuth{PodIdentity: &kmsv1alpha1.PodIdentity{}})
				before := agencyIAM.Stats()
				return t.selector("pod", referTo(kmsv1alpha1.KindClusterKmsProvider, p.Name)), func() int64 {
					now := agencyIAM.Stats()
					return now.PodIdentityCredentials - before.PodIdentityCredentials + now.Refusals - before.Refusals
				}
			},
			reason: kmsv1alpha1.ReasonIdentityExchangeFailed,
			says:   []string{"spec.auth.podIdentity", "plain http", "--allow-insecure-endpoints"},
		}),
	)
})
