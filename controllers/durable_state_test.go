package controllers_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/controllers"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// denyWrites makes the API server refuse every write of resource (such as "configmaps", or
// "kmskeyselectors/status") in the namespace, through a ValidatingAdmissionPolicy, until the
// returned function is called. It returns once a write is refused, so that the policy is known
// to be in force: a dry-run write of a new ConfigMap, or of probe's status.
func denyWrites(ns, group, resource string, probe client.Object) (allow func()) {
	GinkgoHelper()
	name := "deny-" + ns + "-" + strings.ReplaceAll(resource, "/", "-")
	policy := &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionv1.Fail),
			MatchConstraints: &admissionv1.MatchResources{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}},
				ResourceRules: []admissionv1.NamedRuleWithOperations{{RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Create, admissionv1.Update},
					Rule:       admissionv1.Rule{APIGroups: []string{group}, APIVersions: []string{"*"}, Resources: []string{resource}},
				}}},
			},
			Validations: []admissionv1.Validation{{Expression: "false", Message: "writes are refused for this test"}},
		},
	}
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName: name, ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
		},
	}
	Expect(k8sClient.Create(ctx(), policy)).To(Succeed())
	Expect(k8sClient.Create(ctx(), binding)).To(Succeed())
	allow = func() {
		GinkgoHelper()
		Expect(k8sClient.Delete(ctx(), binding)).To(Succeed())
		Expect(k8sClient.Delete(ctx(), policy)).To(Succeed())
	}
	DeferCleanup(func() {
		_ = k8sClient.Delete(ctx(), binding)
		_ = k8sClient.Delete(ctx(), policy)
	})
	refused := MatchError(ContainSubstring("refused for this test"))
	switch resource {
	case "configmaps":
		probe := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "probe-"}}
		Eventually(func() error { return k8sClient.Create(ctx(), probe, client.DryRunAll) }).Should(refused)
	case "kmskeyselectors/status":
		Eventually(func() error {
			return k8sClient.Status().Patch(ctx(), probe, client.RawPatch(types.MergePatchType, []byte(`{"status":{"configMapName":"probe"}}`)), client.DryRunAll)
		}).Should(refused)
	}
	return allow
}

var _ = Describe("Durable reconcile state", func() {
	It("lists a changed spec again after a failed write, rather than dropping the change", func() {
		prodKey := testkit.Key("1a000000-0000-4000-8000-000000000001", "prod-db", kms.StateEnabled, map[string]string{"env": "prod"})
		devKey := testkit.Key("1b000000-0000-4000-8000-000000000002", "dev-db", kms.StateEnabled, map[string]string{"env": "dev"})
		f := newFixture(kmstest.WithKeys(prodKey, devKey))
		sel := f.Create(f.Selector("spec-change", testkit.WithTags(testkit.Tag("env", "prod")), testkit.WithRefreshInterval(time.Hour)))
		Eventually(f.States("spec-change")).Should(Equal(testkit.StatesOf(prodKey)))

		allow := denyWrites(f.Namespace, "", "configmaps", nil)
		listed := f.FilterCalls()
		Eventually(func(g Gomega) {
			cur := f.Get(sel)(g)
			cur.Spec.Tags = []kmsv1alpha1.TagSelector{testkit.Tag("env", "dev")}
			g.Expect(k8sClient.Update(ctx(), cur)).To(Succeed())
		}).Should(Succeed())
		// The new spec was listed, and its write refused.
		Eventually(f.FilterCalls).Should(BeNumerically(">", listed))
		Expect(f.States("spec-change")(Default)).To(Equal(testkit.StatesOf(prodKey)))

		allow()
		Eventually(f.States("spec-change")).Should(Equal(testkit.StatesOf(devKey)))
		Eventually(f.Handled(sel)).Should(Succeed())
		st := f.Get(sel)(Default).Status
		Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonSynced))
		Expect(st.NextSyncTime).To(BeNil(), "a Synced selector follows its slot, with no retry scheduled")
		Expect(st.ConsecutiveFailures).To(BeZero())
	})

	It("answers a force-sync whose write failed once, rather than dropping it", func() {
		k := testkit.Key("2a000000-0000-4000-8000-000000000001", "db", kms.StateEnabled, nil)
		f := newFixture(kmstest.WithKeys(k))
		sel := f.Create(f.Selector("forced", testkit.WithRefreshInterval(time.Hour)))
		Eventually(f.States("forced")).Should(Equal(testkit.StatesOf(k)))

		allow := denyWrites(f.Namespace, "", "configmaps", nil)
		Expect(f.KMS.SetKeyState(k.ID, kms.StateDisabled)).To(Succeed())
		listed := f.FilterCalls()
		value := f.ForceSync(sel)
		Eventually(f.FilterCalls).Should(BeNumerically(">", listed))

		allow()
		Eventually(f.States("forced")).Should(Equal(map[string]string{k.ID: "Disabled"}))
		Eventually(func(g Gomega) {
			cur := f.Get(sel)(g)
			g.Expect(cur.Status.LastHandledForceSync).To(Equal(value))
			g.Expect(testkit.ReadyCondition(cur).Reason).To(Equal(kmsv1alpha1.ReasonSynced))
		}).Should(Succeed())
	})

	It("writes the status again when patching it failed, rather than waiting an interval", func() {
		k := testkit.Key("3a000000-0000-4000-8000-000000000001", "db", kms.StateEnabled, nil)
		f := newFixture(kmstest.WithKeys(k))
		probe := f.Create(f.Selector("probe", func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.Suspend = true }))
		Eventually(f.ReadyReason(probe)).Should(Equal(kmsv1alpha1.ReasonSuspended))
		allow := denyWrites(f.Namespace, kmsv1alpha1.GroupVersion.Group, "kmskeyselectors/status", probe)
		sel := f.Create(f.Selector("status", testkit.WithRefreshInterval(time.Hour)))
		// The sync ran and wrote the ConfigMap; its status was refused.
		Eventually(f.States("status")).Should(Equal(testkit.StatesOf(k)))
		Expect(f.Get(sel)(Default).Status.LastSyncTime).To(BeNil())

		allow()
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.Get(sel)(Default).Status.KeyCount).To(Equal(ptr.To[int32](1)))
	})

	It("rejects a selector name too long for the label, and syncs one that fits", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		long := f.Selector(strings.Repeat("a", kmsv1alpha1.MaxNameLength+1))
		err := k8sClient.Create(ctx(), long)
		Expect(err).To(MatchError(ContainSubstring("metadata.name must be at most 63 characters")))

		longest := f.Create(f.Selector(strings.Repeat("b", kmsv1alpha1.MaxNameLength)))
		Eventually(f.ReadyReason(longest)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.ConfigMap(longest.Name)(Default).Labels).To(HaveKeyWithValue(kmsv1alpha1.SelectorLabel, longest.Name))
	})

	It("refuses content that etcd could not store with TargetTooLarge, and keeps the data", func() {
		f := newFixture(kmstest.WithKeys(kmstest.GenerateKeys(10_000, nil)...))
		sel := f.Create(f.Selector("large"))
		Eventually(f.ReadyReason(sel), time.Minute).Should(Equal(kmsv1alpha1.ReasonSynced))
		before := f.ConfigMap("large")(Default)
		Expect(before.BinaryData).To(HaveKey(kmsv1alpha1.KeysJSONGzipKey))

		Expect(f.KMS.PutKeys(kmstest.GenerateKeys(14_000, nil)...)).To(Succeed())
		f.ForceSync(sel)
		Eventually(f.ReadyReason(sel), time.Minute).Should(Equal(kmsv1alpha1.ReasonTargetTooLarge))
		Expect(f.ConfigMap("large")(Default).ResourceVersion).To(Equal(before.ResourceVersion))
	})

	It("finds the size limit where etcd puts it, not where the ConfigMap's data limit is", func() {
		// 14,000 key entries and a 400 KB incompressible keys.json.gz: under the API server's
		// 1 MiB limit on data, but with server-side apply's managed fields over etcd's 1.5 MiB.
		ns := newFixture().Namespace
		data := map[string]string{}
		for range 14_000 {
			data[string(uuid.NewUUID())] = "Enabled"
		}
		blob := make([]byte, 400_000)
		_, _ = rand.Read(blob)
		Expect(controllers.ContentFits(data, map[string][]byte{kmsv1alpha1.KeysJSONGzipKey: blob})).To(BeFalse())
		cm := corev1ac.ConfigMap("too-large", ns).WithData(data).WithBinaryData(map[string][]byte{kmsv1alpha1.KeysJSONGzipKey: blob})
		err := k8sClient.Apply(ctx(), cm, client.FieldOwner(controllers.FieldOwner))
		Expect(err).To(MatchError(ContainSubstring("too large")))
	})

	It("needs the finalizers permission to set blockOwnerDeletion, which the generated RBAC grants", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		sel := f.Create(f.Selector("owned"))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		refs := f.ConfigMap("owned")(Default).OwnerReferences
		Expect(refs).To(ConsistOf(HaveField("BlockOwnerDeletion", HaveValue(BeTrue()))))

		// The same write by a user with every rule of the generated role but that one is refused:
		// the admission plugin is in force, and the rule is what makes the operator's write pass.
		roles, err := testkit.ReadRoles(env.Root + "/config/rbac/role.yaml")
		Expect(err).NotTo(HaveOccurred())
		var rules []rbacv1.PolicyRule
		for _, r := range roles[0].Rules {
			if !strings.Contains(fmt.Sprint(r.Resources), "finalizers") {
				rules = append(rules, r)
			}
		}
		user := "no-finalizers-" + f.Namespace
		Expect(k8sClient.Create(ctx(), &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: user}, Rules: rules})).To(Succeed())
		Expect(k8sClient.Create(ctx(), &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: user}},
		})).To(Succeed())
		authn, err := env.Environment.AddUser(envtest.User{Name: user}, nil)
		Expect(err).NotTo(HaveOccurred())
		restricted, err := client.New(authn.Config(), client.Options{Scheme: k8sClient.Scheme()})
		Expect(err).NotTo(HaveOccurred())
		owner := metav1ac.OwnerReference().WithAPIVersion(kmsv1alpha1.GroupVersion.String()).WithKind("KmsKeySelector").
			WithName(sel.Name).WithUID(f.Get(sel)(Default).UID).WithController(true).WithBlockOwnerDeletion(true)
		cm := corev1ac.ConfigMap("owned-by-other", f.Namespace).WithOwnerReferences(owner)
		Eventually(func() error {
			return restricted.Apply(context.Background(), cm, client.FieldOwner("no-finalizers"))
		}).Should(MatchError(ContainSubstring("cannot set blockOwnerDeletion")))
	})
})
