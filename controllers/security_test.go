package controllers_test

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/controllers"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

var _ = Describe("Security", func() {
	It("uses only a Secret in the selector's own namespace", func() {
		a, b := newFixture(), newFixture()
		// The Secret in b holds a token a's KMS accepts: reading it would make the selector work.
		Expect(k8sClient.Create(ctx(), testkit.Secret(b.Namespace, "only-in-b", map[string]string{"token": a.Token}))).To(Succeed())

		sel := a.Create(a.Selector("cross-ns", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.Provider.CredentialsSecretRef = &kmsv1alpha1.SecretReference{Name: "only-in-b"}
		}))
		deleteSelectorAtCleanup(sel)
		Eventually(a.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsNotFound))
		Expect(a.ReadyCondition(sel)(Default).Message).To(ContainSubstring(`secret "only-in-b" named by spec.provider.credentialsSecretRef does not exist in namespace "` + a.Namespace + `"`))

		By("a namespace sneaked into the reference is dropped by the schema")
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(kmsv1alpha1.GroupVersion.WithKind("KmsKeySelector"))
		u.SetNamespace(a.Namespace)
		u.SetName("sneaky")
		Expect(unstructured.SetNestedField(u.Object, map[string]any{
			"projectId": kmstest.DefaultProjectID, "endpoint": a.KMS.URL,
			"credentialsSecretRef": map[string]any{"name": "only-in-b", "namespace": b.Namespace},
		}, "spec", "provider")).To(Succeed())
		Expect(unstructured.SetNestedField(u.Object, true, "spec", "allKeys")).To(Succeed())
		Expect(k8sClient.Create(ctx(), u)).To(Succeed())
		sneaky := &kmsv1alpha1.KmsKeySelector{}
		Expect(k8sClient.Get(ctx(), types.NamespacedName{Namespace: a.Namespace, Name: "sneaky"}, sneaky)).To(Succeed())
		deleteSelectorAtCleanup(sneaky)
		stored := &unstructured.Unstructured{}
		stored.SetGroupVersionKind(u.GroupVersionKind())
		Expect(k8sClient.Get(ctx(), client.ObjectKeyFromObject(u), stored)).To(Succeed())
		ref, _, _ := unstructured.NestedMap(stored.Object, "spec", "provider", "credentialsSecretRef")
		Expect(ref).To(Equal(map[string]any{"name": "only-in-b"}))
		Eventually(a.ReadyReason(sneaky)).Should(Equal(kmsv1alpha1.ReasonCredentialsNotFound))

		crd := &unstructured.Unstructured{}
		crd.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
		Expect(k8sClient.Get(ctx(), types.NamespacedName{Name: "kmskeyselectors.kms.keysync.dev"}, crd)).To(Succeed())
		versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
		Expect(versions).To(HaveLen(1))
		refSchema, _, _ := unstructured.NestedMap(versions[0].(map[string]any), "schema", "openAPIV3Schema",
			"properties", "spec", "properties", "provider", "properties", "credentialsSecretRef")
		Expect(refSchema).To(HaveKeyWithValue("properties", HaveLen(1)))
		Expect(refSchema).To(HaveKeyWithValue("properties", HaveKey("name")))
		Expect(refSchema).NotTo(HaveKey("x-kubernetes-preserve-unknown-fields"))

		// A backoff retry after all this has found no Secret either.
		awaitRetry(Default, a, sel)
		Expect(a.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonCredentialsNotFound))
		Expect(a.KMS.Stats().Total).To(BeZero(), "KMS was called with another namespace's credentials")
	})

	It("asks RBAC for the least it needs: no wildcard, Secrets get only", func() {
		role, err := testkit.ReadRole(filepath.Join(env.Root, testkit.ManagerRoleFile))
		Expect(err).NotTo(HaveOccurred())
		Expect(role.Kind).To(Equal("ClusterRole"))
		Expect(testkit.ResourceVerbs(role.Rules)).To(Equal(map[string][]string{
			"/secrets": {"get"},
			// Workload identity mints tokens of the service accounts that providers name.
			"/serviceaccounts/token": {"create"},
			// Only a service account that opted in is used, and no token the API server accepts
			// leaves the cluster.
			"/serviceaccounts":                       {"get"},
			"authentication.k8s.io/tokenreviews":     {"create"},
			"/configmaps":                            {"create", "get", "list", "patch", "watch"},
			"events.k8s.io/events":                   {"create", "patch"},
			"kms.keysync.dev/kmskeyselectors":        {"get", "list", "watch"},
			"kms.keysync.dev/kmskeyselectors/status": {"get", "patch", "update"},
			// The ConfigMap's owner reference sets blockOwnerDeletion, which needs this.
			"kms.keysync.dev/kmskeyselectors/finalizers": {"update"},
			"kms.keysync.dev/kmsproviders":               {"get", "list", "watch"},
			"kms.keysync.dev/kmsproviders/status":        {"get", "patch", "update"},
			"kms.keysync.dev/clusterkmsproviders":        {"get", "list", "watch"},
			"kms.keysync.dev/clusterkmsproviders/status": {"get", "patch", "update"},
			// A ClusterKmsProvider's conditions select namespaces by label.
			"/namespaces": {"get", "list", "watch"},
		}))

		roles, err := testkit.ReadRBACRoles(env.Root)
		Expect(err).NotTo(HaveOccurred())
		Expect(roles).NotTo(BeEmpty())
		for _, role := range roles {
			for _, r := range role.Rules {
				for _, list := range [][]string{r.APIGroups, r.Resources, r.Verbs, r.ResourceNames, r.NonResourceURLs} {
					Expect(list).NotTo(ContainElement(ContainSubstring("*")), "%s grants a wildcard", role.File)
				}
				for _, res := range r.Resources {
					if res == "secrets" {
						Expect(filepath.Base(role.File)).To(Equal("role.yaml"), "%s grants access to Secrets", role.File)
					}
				}
			}
		}
	})

	// controller-runtime elects its leader with a Lease (and records events about it); the
	// scaffolded Role also grants every verb on the ConfigMaps of the operator's namespace.
	It("grants leader election only what it uses", func() {
		role, err := testkit.ReadRole(filepath.Join(env.Root, testkit.LeaderElectionRoleFile))
		Expect(err).NotTo(HaveOccurred())
		Expect(role.Kind).To(Equal("Role"))
		granted, err := testkit.ResourceVerbs(role.Rules)
		Expect(err).NotTo(HaveOccurred())
		Expect(granted).To(HaveKeyWithValue("coordination.k8s.io/leases", ConsistOf("get", "list", "watch", "create", "update", "patch", "delete")))
		Expect(granted).NotTo(HaveKey("/configmaps"), "leader election uses Leases; the ConfigMap rule lets the operator delete any ConfigMap of its namespace")
	})

	// Each row has a fixture and a selector of its own, so the rows can wait for the retry side
	// by side.
	describeConcurrently("a bad credentials Secret gives CredentialsInvalid naming the Secret key, never a value, and no KMS call", badSecretCase,
		concurrently("an empty token", badSecret{map[string]string{"token": ""}, `secret key "token" is empty`}),
		concurrently("a token of white space", badSecret{map[string]string{"token": " \n\t "}, `secret key "token" is empty`}),
		concurrently("an empty secretKey", badSecret{map[string]string{"accessKey": "AKBADINPUT01", "secretKey": ""}, `secret key "secretKey" is empty`}),
		concurrently("only accessKey, half of the pair", badSecret{map[string]string{"accessKey": "AKBADINPUT01"}, `secret key "secretKey" is missing`}),
		concurrently("only secretKey, half of the pair", badSecret{map[string]string{"secretKey": "half-pair-sk-9f3c7a"}, `secret key "accessKey" is missing`}),
		concurrently("only securityToken", badSecret{map[string]string{"securityToken": "lonely-st-4b2e8d"}, `secret key "accessKey" is missing`}),
		concurrently("a token that is not UTF-8", badSecret{map[string]string{"token": "tok-\xff\xfe-8c1d"}, `secret key "token" is not valid UTF-8`}),
		concurrently("a secretKey that is not UTF-8", badSecret{map[string]string{"accessKey": "AKBADINPUT01", "secretKey": "sk-\xc3\x28-77aa"}, `secret key "secretKey" is not valid UTF-8`}),
		concurrently("no credential key at all", badSecret{map[string]string{"password": "unrelated-5e6f"}, `holds neither "token" nor "accessKey" and "secretKey"`}),
		concurrently("a token and an AK/SK pair", badSecret{map[string]string{"token": "both-tok-1a2b", "accessKey": "AKBADINPUT01", "secretKey": "both-sk-3c4d"}, "both token and accessKey/secretKey"}),
	)
})

// badSecret is a credentials Secret's data, and what the condition message must say about it.
type badSecret struct {
	data map[string]string
	want string
}

func badSecretCase(s specT, c badSecret) {
	f := fixtureFor(s, kmstest.WithKeys(keyA), kmstest.WithAKSK("AKBADINPUT01", "bad-input-secret-key", ""))
	f.PutCredentials(c.data)
	start := time.Now()
	sel := f.Create(f.Selector("bad-input"))
	deleteAtCleanup(s, sel)

	s.Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsInvalid))
	cond := f.ReadyCondition(sel)(s)
	s.Expect(cond.Message).To(ContainSubstring(c.want))
	s.Expect(cond.Message).To(ContainSubstring(`secret "kms-credentials"`))
	s.Eventually(f.Warnings(sel)).Should(ContainElement(warningWith(kmsv1alpha1.ReasonCredentialsInvalid, c.want)))

	status, err := json.Marshal(f.Get(sel)(s).Status)
	s.Expect(err).NotTo(HaveOccurred())
	var notes []string
	for _, e := range f.Warnings(sel)(s) {
		notes = append(notes, e.Note)
	}
	for _, v := range c.data {
		if v = strings.TrimSpace(v); len(v) >= 4 {
			s.Expect(string(status)).NotTo(ContainSubstring(v))
			s.Expect(strings.Join(notes, "\n")).NotTo(ContainSubstring(v))
		}
	}
	s.Expect(f.KMS.Stats().Total).To(BeZero())

	// The operator carries on: a fixed Secret is picked up at the next retry.
	f.PutCredentials(map[string]string{"accessKey": "AKBADINPUT01", "secretKey": "bad-input-secret-key"})
	s.Eventually(f.ReadyReason(sel), controllers.RecoveryTimeout(time.Since(start), testBackoff, suiteRefresh, 0)).Should(Equal(kmsv1alpha1.ReasonSynced))
}
