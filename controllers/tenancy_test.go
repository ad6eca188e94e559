package controllers_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/render"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/iamtest"
)

// tenant is a team that holds only the editor roles of selectors and KmsProviders in its
// namespace, and an IAM emulator that trusts the cluster and the team's KMS.
type tenant struct {
	f      *testkit.Fixture
	user   client.Client
	iam    *iamtest.IAM
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
// as the tenant's user, checks what is particular to the attack, and returns the selector the
// operator answered, with leaked, which counts what reached a place a credential must not go.
// The answer's reason (a refusal, or Synced when the attack was to change what the operator
// syncs) and what its message says are the row's. A row whose answer comes after a listing of
// the tenant's own KMS sets mayList.
type attack struct {
	run     func(t *tenant) (sel *kmsv1alpha1.KmsKeySelector, leaked func() int64)
	reason  string
	says    []string
	mayList bool
}

// grantConfigMaps lets the tenant's user edit ConfigMaps, as the built-in edit role does (envtest
// runs no controller that aggregates the built-in roles).
func (t *tenant) grantConfigMaps() {
	GinkgoHelper()
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "configmap-editor", Namespace: t.f.Namespace}, Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch", "create", "update", "patch", "delete"},
	}}}
	Expect(k8sClient.Create(ctx(), role)).To(Succeed())
	Expect(k8sClient.Create(ctx(), &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name, Namespace: t.f.Namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: testkit.NamespaceEditorName(t.f.Namespace)}},
	})).To(Succeed())
}

// forgedDigest computes the content digest annotation as anyone who reads the operator's source
// can.
func forgedDigest(cm *corev1.ConfigMap) string {
	return render.Content{Data: cm.Data, BinaryData: cm.BinaryData}.Digest()
}

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

// iamRequests counts every request that IAM answered on its id-token route: each carried a
// service account token.
func iamRequests(iam *iamtest.IAM) func() int64 {
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

		Entry("3: a selector of a namespace that a ClusterKmsProvider excludes", func() attack {
			return attack{
				run: func(t *tenant) (*kmsv1alpha1.KmsKeySelector, func() int64) {
					admin := newFixture(kmstest.WithKeys(keyA))
					label := "team-" + admin.Namespace
					p := sharedProvider(admin, label)
					status := providerStatus(p, func() *kmsv1alpha1.KmsProviderStatus { return &p.Status })
					Eventually(status).Should(HaveField("Conditions", ContainElement(HaveField("Reason", kmsv1alpha1.ReasonValidated))))
					team := admin.Tenant(map[string]string{label: "yes"})
					allowed := team.Create(team.Selector("keys", referTo(kmsv1alpha1.KindClusterKmsProvider, p.Name), testkit.WithRefreshInterval(time.Hour)))
					Eventually(team.ReadyReason(allowed)).Should(Equal(kmsv1alpha1.ReasonSynced))
					counted := admin.KMS.Stats().ByAction[kmstest.ActionCount]
					countCalls := func() int64 { return admin.KMS.Stats().ByAction[kmstest.ActionCount] - counted }

					sel := t.selector("borrow", referTo(kmsv1alpha1.KindClusterKmsProvider, p.Name), testkit.WithRefreshInterval(10*time.Second))
					Eventually(t.f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonProviderNotAllowed))
					By("making the provider's validation due")
					makeValidationDue(p, status)
					Expect(status(Default).Selectors).To(Equal(int32(1)), "the refused selector is counted")
					Expect(meta.FindStatusCondition(status(Default).Conditions, kmsv1alpha1.ConditionReady).Message).To(ContainSubstring("within 1h0m0s"),
						"the refused selector's 10s refresh set the provider's validation interval")
					return sel, countCalls
				},
				reason: kmsv1alpha1.ReasonProviderNotAllowed,
				says:   []string{"does not allow namespace", "spec.conditions"},
			}
		}()),

		Entry("4: an expression whose errors would make a message too long to write", attack{
			run: func(t *tenant) (*kmsv1alpha1.KmsKeySelector, func() int64) {
				t.f.PutCredentials(map[string]string{kmsv1alpha1.SecretToken: t.f.Token})
				var undeclared strings.Builder
				for i := 0; undeclared.Len() < 4000; i++ {
					fmt.Fprintf(&undeclared, "undeclared%d, ", i)
				}
				expression := "[" + strings.TrimSuffix(undeclared.String(), ", ") + "]"
				sel := t.selector("verbose", func(s *kmsv1alpha1.KmsKeySelector) {
					s.Spec.Target.Data = map[string]string{}
					for i := range 64 {
						s.Spec.Target.Data[fmt.Sprintf("entry-%02d", i)] = expression
					}
				})
				Eventually(t.f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonInvalidSpec))
				Expect(len(readyMessage(t.f, sel))).To(BeNumerically("<=", 4096))
				// The API server refuses an event note over 1 KiB: the event exists only if it was cut.
				Eventually(t.f.Warnings(sel)).Should(ContainElement(And(
					HaveField("Reason", kmsv1alpha1.ReasonInvalidSpec), HaveField("Note", WithTransform(func(s string) int { return len(s) }, BeNumerically("<=", 1024))))))
				return sel, func() int64 { return 0 }
			},
			reason: kmsv1alpha1.ReasonInvalidSpec,
			says:   []string{`spec.target.data["entry-00"]`, "undeclared reference", "bytes cut"},
		}),

		Entry("5: a ConfigMap edited with a recomputed digest annotation", attack{
			run: func(t *tenant) (*kmsv1alpha1.KmsKeySelector, func() int64) {
				t.f.PutCredentials(map[string]string{kmsv1alpha1.SecretToken: t.f.Token})
				t.grantConfigMaps()
				sel := t.selector("keys", testkit.WithRefreshInterval(time.Hour))
				Eventually(t.f.States("keys")).Should(Equal(testkit.StatesOf(keyA)))
				synced := t.f.ConfigMap("keys")(Default).Data
				data := func(g Gomega) map[string]string { return t.f.ConfigMap("keys")(g).Data }

				By("editing the data and recomputing the digest annotation")
				forged := t.f.ConfigMap("keys")(Default)
				forged.Data["forged-key"] = "Enabled"
				forged.Data[kmsv1alpha1.KeysJSONKey] = `[{"id":"forged-key","state":"Enabled"}]`
				forged.Annotations[kmsv1alpha1.ContentDigestAnnotation] = forgedDigest(forged)
				Eventually(func() error { return t.user.Update(ctx(), forged) }).Should(Succeed())
				Eventually(data).Should(Equal(synced), "the forged content was accepted")

				By("forging it again, then deleting the ConfigMap")
				forged = t.f.ConfigMap("keys")(Default)
				forged.Data = map[string]string{"forged-key": "Enabled"}
				forged.Annotations[kmsv1alpha1.ContentDigestAnnotation] = forgedDigest(forged)
				Expect(t.user.Update(ctx(), forged)).To(Succeed())
				Expect(t.user.Delete(ctx(), forged)).To(Succeed())
				Eventually(data).Should(Equal(synced), "the ConfigMap was restored from forged content")
				Expect(t.f.FilterCalls()).To(Equal(int64(1)), "the repairs listed KMS")
				return sel, func() int64 { return 0 }
			},
			reason:  kmsv1alpha1.ReasonSynced,
			mayList: true,
		}),

		Entry("8: a force-sync while an older listing of the same question is in flight", attack{
			run: func(t *tenant) (*kmsv1alpha1.KmsKeySelector, func() int64) {
				t.f.PutCredentials(map[string]string{kmsv1alpha1.SecretToken: t.f.Token})
				Expect(t.f.KMS.PutKeys(keyB)).To(Succeed())
				// Two selectors that ask the same question share listings; a page of one key
				// makes a listing of two keys take two calls.
				ask := []func(*kmsv1alpha1.KmsKeySelector){testkit.WithTags(testkit.Tag("env", "prod")), testkit.WithPageSize(1), testkit.WithRefreshInterval(time.Hour)}
				slow, forced := t.selector("slow", ask...), t.selector("forced", ask...)
				for _, s := range []*kmsv1alpha1.KmsKeySelector{slow, forced} {
					Eventually(t.f.States(s.Name)).Should(Equal(testkit.StatesOf(keyA, keyB)))
				}

				By("holding a listing for the first selector after its first page")
				Expect(t.f.KMS.InjectFault(kmstest.Fault{Kind: kmstest.FaultLatency, Action: kmstest.ActionFilter, Skip: 1, Times: 1, Delay: 3 * time.Second})).To(Succeed())
				_, err := testkit.ForceSync(ctx(), t.user, slow)
				Expect(err).NotTo(HaveOccurred())
				Eventually(t.f.KMS.Faults).Should(BeEmpty(), "the second page is being held")

				By("disabling the first key, then force-syncing the second selector")
				Expect(t.f.KMS.SetKeyState(keyA.ID, kms.StateDisabled)).To(Succeed())
				_, err = testkit.ForceSync(ctx(), t.user, forced)
				Expect(err).NotTo(HaveOccurred())
				Eventually(t.f.Handled(forced)).Should(Succeed())
				Expect(t.f.States("forced")(Default)).To(HaveKeyWithValue(keyA.ID, kms.StateDisabled.String()),
					"the force-sync was answered by the listing that began before it")
				return forced, func() int64 { return 0 }
			},
			reason:  kmsv1alpha1.ReasonSynced,
			mayList: true,
		}),

		Entry("6: an endpoint that echoes the token JSON-escaped", attack{
			run: func(t *tenant) (*kmsv1alpha1.KmsKeySelector, func() int64) {
				t.f.ServiceAccount("reader", testkit.TokenAudience)
				t.iam.InjectFault(iamtest.Fault{Route: iamtest.RouteIDToken, Status: http.StatusBadRequest, Echo: true})
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
