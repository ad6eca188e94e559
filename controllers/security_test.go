package controllers_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/controllers"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// rbacRules flattens rules into "group/resource" -> sorted verbs, and fails on anything a rule
// can say beyond that (resource names, non-resource URLs).
func rbacRules(rules []rbacv1.PolicyRule) map[string][]string {
	GinkgoHelper()
	out := map[string][]string{}
	for _, r := range rules {
		Expect(r.ResourceNames).To(BeEmpty())
		Expect(r.NonResourceURLs).To(BeEmpty())
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				k := g + "/" + res
				out[k] = append(out[k], r.Verbs...)
				sort.Strings(out[k])
			}
		}
	}
	return out
}

func secretWith(ns, name string, data map[string]string) *corev1.Secret {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Data: map[string][]byte{}}
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	return s
}

func readRole(path string) (kind string, rules []rbacv1.PolicyRule) {
	GinkgoHelper()
	raw, err := os.ReadFile(path)
	Expect(err).NotTo(HaveOccurred())
	var obj struct {
		Kind  string              `json:"kind"`
		Rules []rbacv1.PolicyRule `json:"rules"`
	}
	Expect(yaml.Unmarshal(raw, &obj)).To(Succeed())
	return obj.Kind, obj.Rules
}

var _ = Describe("Security", func() {
	It("uses only a Secret in the selector's own namespace", func() {
		a, b := newFixture(), newFixture()
		// The Secret in b holds a token a's KMS accepts: reading it would make the selector work.
		Expect(k8sClient.Create(ctx(), secretWith(b.ns, "only-in-b", map[string]string{"token": a.token}))).To(Succeed())

		sel := a.create(a.selector("cross-ns", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.Provider.CredentialsSecretRef.Name = "only-in-b"
		}))
		deleteSelectorAtCleanup(sel)
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsNotFound))
		Expect(readyCondition(sel).Message).To(ContainSubstring(`secret "only-in-b" named by spec.provider.credentialsSecretRef does not exist in namespace "` + a.ns + `"`))

		By("a namespace sneaked into the reference is dropped by the schema")
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(kmsv1alpha1.GroupVersion.WithKind("KmsKeySelector"))
		u.SetNamespace(a.ns)
		u.SetName("sneaky")
		Expect(unstructured.SetNestedField(u.Object, map[string]any{
			"projectId": kmstest.DefaultProjectID, "endpoint": a.kms.URL,
			"credentialsSecretRef": map[string]any{"name": "only-in-b", "namespace": b.ns},
		}, "spec", "provider")).To(Succeed())
		Expect(k8sClient.Create(ctx(), u)).To(Succeed())
		sneaky := &kmsv1alpha1.KmsKeySelector{}
		Expect(k8sClient.Get(ctx(), types.NamespacedName{Namespace: a.ns, Name: "sneaky"}, sneaky)).To(Succeed())
		deleteSelectorAtCleanup(sneaky)
		stored := &unstructured.Unstructured{}
		stored.SetGroupVersionKind(u.GroupVersionKind())
		Expect(k8sClient.Get(ctx(), client.ObjectKeyFromObject(u), stored)).To(Succeed())
		ref, _, _ := unstructured.NestedMap(stored.Object, "spec", "provider", "credentialsSecretRef")
		Expect(ref).To(Equal(map[string]any{"name": "only-in-b"}))
		Eventually(readyReason(sneaky)).Should(Equal(kmsv1alpha1.ReasonCredentialsNotFound))

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

		Consistently(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsNotFound))
		Expect(a.kms.Stats().Total).To(BeZero(), "KMS was called with another namespace's credentials")
	})

	It("asks RBAC for the least it needs: no wildcard, Secrets get only", func() {
		kind, rules := readRole(filepath.Join("..", "config", "rbac", "role.yaml"))
		Expect(kind).To(Equal("ClusterRole"))
		Expect(rbacRules(rules)).To(Equal(map[string][]string{
			"/secrets":                               {"get"},
			"/configmaps":                            {"create", "get", "list", "patch", "watch"},
			"events.k8s.io/events":                   {"create", "patch"},
			"kms.keysync.dev/kmskeyselectors":        {"get", "list", "watch"},
			"kms.keysync.dev/kmskeyselectors/status": {"get", "patch", "update"},
		}))

		files, err := filepath.Glob(filepath.Join("..", "config", "rbac", "*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		Expect(files).NotTo(BeEmpty())
		for _, file := range files {
			_, rules := readRole(file)
			for _, r := range rules {
				for _, list := range [][]string{r.APIGroups, r.Resources, r.Verbs, r.ResourceNames, r.NonResourceURLs} {
					Expect(list).NotTo(ContainElement(ContainSubstring("*")), "%s grants a wildcard", file)
				}
				for _, res := range r.Resources {
					if res == "secrets" {
						Expect(filepath.Base(file)).To(Equal("role.yaml"), "%s grants access to Secrets", file)
					}
				}
			}
		}
	})

	// controller-runtime elects its leader with a Lease (and records events about it); the
	// scaffolded Role also grants every verb on the ConfigMaps of the operator's namespace.
	It("grants leader election only what it uses", func() {
		kind, rules := readRole(filepath.Join("..", "config", "rbac", "leader_election_role.yaml"))
		Expect(kind).To(Equal("Role"))
		granted := rbacRules(rules)
		Expect(granted).To(HaveKeyWithValue("coordination.k8s.io/leases", ConsistOf("get", "list", "watch", "create", "update", "patch", "delete")))
		Expect(granted).NotTo(HaveKey("/configmaps"), "leader election uses Leases; the ConfigMap rule lets the operator delete any ConfigMap of its namespace")
	})

	DescribeTable("a bad credentials Secret gives CredentialsInvalid naming the Secret key, never a value, and no KMS call",
		func(data map[string]string, want string) {
			f := newFixture(kmstest.WithKeys(keyA), kmstest.WithAKSK("AKBADINPUT01", "bad-input-secret-key", ""))
			f.putSecret(data)
			start := time.Now()
			sel := f.create(f.selector("bad-input"))
			deleteSelectorAtCleanup(sel)

			Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsInvalid))
			cond := readyCondition(sel)
			Expect(cond.Message).To(ContainSubstring(want))
			Expect(cond.Message).To(ContainSubstring(`secret "kms-credentials"`))
			Eventually(selectorWarnings(sel)).Should(ContainElement(warningWith(kmsv1alpha1.ReasonCredentialsInvalid, want)))

			status, err := json.Marshal(get(sel)(Default).Status)
			Expect(err).NotTo(HaveOccurred())
			var notes []string
			for _, e := range selectorWarnings(sel)(Default) {
				notes = append(notes, e.Note)
			}
			for _, v := range data {
				if v = strings.TrimSpace(v); len(v) >= 4 {
					Expect(string(status)).NotTo(ContainSubstring(v))
					Expect(strings.Join(notes, "\n")).NotTo(ContainSubstring(v))
				}
			}
			Expect(f.kms.Stats().Total).To(BeZero())

			By("the operator carries on: a fixed Secret is picked up at the next retry")
			f.putSecret(map[string]string{"accessKey": "AKBADINPUT01", "secretKey": "bad-input-secret-key"})
			Eventually(readyReason(sel), controllers.RecoveryTimeout(time.Since(start), testBackoff, suiteRefresh, 0)).Should(Equal(kmsv1alpha1.ReasonSynced))
		},
		Entry("an empty token", map[string]string{"token": ""}, `secret key "token" is empty`),
		Entry("a token of white space", map[string]string{"token": " \n\t "}, `secret key "token" is empty`),
		Entry("an empty secretKey", map[string]string{"accessKey": "AKBADINPUT01", "secretKey": ""}, `secret key "secretKey" is empty`),
		Entry("only accessKey, half of the pair", map[string]string{"accessKey": "AKBADINPUT01"}, `secret key "secretKey" is missing`),
		Entry("only secretKey, half of the pair", map[string]string{"secretKey": "half-pair-sk-9f3c7a"}, `secret key "accessKey" is missing`),
		Entry("only securityToken", map[string]string{"securityToken": "lonely-st-4b2e8d"}, `secret key "accessKey" is missing`),
		Entry("a token that is not UTF-8", map[string]string{"token": "tok-\xff\xfe-8c1d"}, `secret key "token" is not valid UTF-8`),
		Entry("a secretKey that is not UTF-8", map[string]string{"accessKey": "AKBADINPUT01", "secretKey": "sk-\xc3\x28-77aa"}, `secret key "secretKey" is not valid UTF-8`),
		Entry("no credential key at all", map[string]string{"password": "unrelated-5e6f"}, `holds neither "token" nor "accessKey" and "secretKey"`),
		Entry("a token and an AK/SK pair", map[string]string{"token": "both-tok-1a2b", "accessKey": "AKBADINPUT01", "secretKey": "both-sk-3c4d"}, "both token and accessKey/secretKey"),
	)
})
