package controllers_test

import (
	"encoding/json"
	"fmt"
	"runtime"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

func withData(policy kmsv1alpha1.MergePolicy, data map[string]string) func(*kmsv1alpha1.KmsKeySelector) {
	return func(s *kmsv1alpha1.KmsKeySelector) {
		s.Spec.Target.MergePolicy = policy
		s.Spec.Target.Data = data
	}
}

// envFrom resolves the environment a container gets from a ConfigMap through envFrom, as the
// kubelet does: every entry whose name is a valid variable name.
func envFrom(cm *corev1.ConfigMap) map[string]string {
	env := map[string]string{}
	for k, v := range cm.Data {
		if len(validation.IsEnvVarName(k)) == 0 {
			env[k] = v
		}
	}
	return env
}

// refreshNow makes a scheduled refresh due at once: nextSyncTime moves into the past and an
// unrelated annotation wakes the selector. It returns once the refresh was handled.
func refreshNow(f *testkit.Fixture, sel *kmsv1alpha1.KmsKeySelector) {
	GinkgoHelper()
	before := f.Get(sel)(Default).Status.LastSyncTime
	past := metav1.NewTime(time.Now().Add(-time.Second))
	Expect(k8sClient.Status().Patch(ctx(), sel, client.RawPatch(types.MergePatchType,
		[]byte(fmt.Sprintf(`{"status":{"nextSyncTime":%q}}`, past.UTC().Format(time.RFC3339)))))).To(Succeed())
	Expect(k8sClient.Patch(ctx(), sel, client.RawPatch(types.MergePatchType,
		[]byte(fmt.Sprintf(`{"metadata":{"annotations":{"test.kms.keysync.dev/poke":"%d"}}}`, time.Now().UnixNano()))))).To(Succeed())
	Eventually(func(g Gomega) {
		st := f.Get(sel)(g).Status
		if st.NextSyncTime != nil {
			g.Expect(st.NextSyncTime.Time).To(BeTemporally(">", time.Now()))
		}
		g.Expect(st.LastSyncTime.Time).To(BeTemporally(">=", before.Time))
	}).Should(Succeed())
}

var _ = Describe("Output expressions", func() {
	It("gives a Pod-shaped consumer one key ID by alias through envFrom", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB, keyC))
		sel := f.Create(f.Selector("env", withData(kmsv1alpha1.MergePolicyReplace, map[string]string{
			"PAYMENTS_DB_KEY_ID": `keys.byAlias("payments-db").id`,
		})))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "consumer", Namespace: f.Namespace},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "app", Image: "registry.example/payments:1.0",
				EnvFrom: []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "env"}}}},
			}}},
		}
		Expect(k8sClient.Create(ctx(), pod)).To(Succeed())
		cm := f.ConfigMap(pod.Spec.Containers[0].EnvFrom[0].ConfigMapRef.Name)(Default)
		Expect(envFrom(cm)).To(Equal(map[string]string{"PAYMENTS_DB_KEY_ID": keyA.ID}))
		Expect(cm.Data).To(HaveLen(1), "Replace writes the data entries only")
	})

	It("changes active.json when a key is disabled, at the next force-sync", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB, keyC))
		sel := f.Create(f.Selector("active", withData("", map[string]string{"active.json": `keys.filter(k, k.state == "Enabled")`})))
		active := func(g Gomega) []string {
			var records []map[string]any
			g.Expect(json.Unmarshal([]byte(f.ConfigMap("active")(g).Data["active.json"]), &records)).To(Succeed())
			var ids []string
			for _, r := range records {
				ids = append(ids, r["id"].(string))
			}
			return ids
		}
		Eventually(active).Should(Equal([]string{keyA.ID, keyC.ID}))
		Expect(f.ConfigMap("active")(Default).Data).To(And(HaveKeyWithValue(keyB.ID, "Disabled"), HaveKey(kmsv1alpha1.KeysJSONKey)),
			"Merge keeps the default entries")

		Expect(f.KMS.SetKeyState(keyC.ID, kms.StateDisabled)).To(Succeed())
		f.ForceSync(sel)
		Eventually(active).Should(Equal([]string{keyA.ID}))
	})

	It("keeps the data when byAlias finds no key, and says which alias", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB))
		sel := f.Create(f.Selector("alias", withData(kmsv1alpha1.MergePolicyReplace, map[string]string{
			"DB_KEY_ID": `keys.byAlias("payments-db").id`,
		}), testkit.WithRefreshInterval(time.Hour)))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		good := f.ConfigMap("alias")(Default)

		Expect(f.KMS.DeleteKey(keyA.ID)).To(BeTrue())
		f.ForceSync(sel)
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonExpressionFailed))
		st := f.Get(sel)(Default).Status
		Expect(testkit.ReadyCondition(f.Get(sel)(Default)).Message).To(ContainSubstring(`no matching key has the alias "payments-db"`))
		Expect(st.ConsecutiveFailures).To(BeZero(), "an expression failure does not back KMS off")
		Expect(st.NextSyncTime.Time).To(BeTemporally(">", time.Now().Add(20*time.Minute)), "the next try is the next refresh")
		Expect(f.ConfigMap("alias")(Default).ResourceVersion).To(Equal(good.ResourceVersion))
		Eventually(f.EventReasons(sel)).Should(ContainElement(kmsv1alpha1.ReasonExpressionFailed))
	})

	It("refuses an expression that does not compile before calling KMS, naming the entry and the position", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		sel := f.Create(f.Selector("broken", withData("", map[string]string{"out": "keys.map(k,\n  k.idd)"})))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonInvalidSpec))
		Expect(testkit.ReadyCondition(f.Get(sel)(Default)).Message).To(ContainSubstring(`spec.target.data["out"]: line 2, column 4: undefined field 'idd'`))
		Expect(f.KMS.Stats().Total).To(BeZero())
	})

	It("refuses entry names that are not ConfigMap keys at apply time", func() {
		f := newFixture()
		sel := f.Selector("names", withData("", map[string]string{"bad/name": `"x"`}))
		Expect(k8sClient.Create(ctx(), sel)).To(MatchError(ContainSubstring("entry names must be ConfigMap keys")))
	})

	It("writes nothing on unchanged refreshes", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB, keyC))
		sel := f.Create(f.Selector("quiet", withData("", map[string]string{"active.json": `keys.filter(k, k.state == "Enabled")`}),
			testkit.WithRefreshInterval(time.Hour)))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		version := f.ConfigMap("quiet")(Default).ResourceVersion
		for range 3 {
			refreshNow(f, sel)
		}
		Expect(f.ConfigMap("quiet")(Default).ResourceVersion).To(Equal(version), "an unchanged refresh wrote the ConfigMap")
	})

	It("stops a hostile expression on its own while another namespace keeps syncing, and leaves no goroutine behind", func() {
		hostile := newFixture(kmstest.WithKeys(keyA, keyB))
		calm := newFixture(kmstest.WithKeys(keyA, keyB, keyC))
		bad := hostile.Create(hostile.Selector("hostile", withData(kmsv1alpha1.MergePolicyReplace, map[string]string{"out": `keys.map(k, k.id)`}),
			testkit.WithRefreshInterval(time.Hour)))
		good := calm.Create(calm.Selector("calm", testkit.WithRefreshInterval(time.Hour)))
		Eventually(hostile.ReadyReason(bad)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Eventually(calm.ReadyReason(good)).Should(Equal(kmsv1alpha1.ReasonSynced))
		// Both emulators are connected to now: the baseline holds their connections' goroutines.
		baseline := runtime.NumGoroutine()

		// A billion steps whose size the estimate cannot see: only the runtime limits stop it.
		Expect(k8sClient.Patch(ctx(), bad, client.RawPatch(types.MergePatchType, []byte(
			`{"spec":{"target":{"data":{"out":"dyn(lists.range(1000)).map(a, dyn(lists.range(1000)).map(b, dyn(lists.range(1000)).map(c, a + b + c)))"}}}}`)))).To(Succeed())
		Eventually(hostile.ReadyReason(bad)).Should(Equal(kmsv1alpha1.ReasonExpressionFailed))
		Expect(testkit.ReadyCondition(hostile.Get(bad)(Default)).Message).To(Or(ContainSubstring("over the budget"), ContainSubstring("took longer than")))
		for range 3 {
			hostile.ForceSync(bad)
			refreshNow(calm, good)
			Eventually(hostile.Handled(bad)).Should(Succeed())
			Expect(calm.ReadyReason(good)(Default)).To(Equal(kmsv1alpha1.ReasonSynced))
		}
		Expect(hostile.ReadyReason(bad)(Default)).To(Equal(kmsv1alpha1.ReasonExpressionFailed))
		Expect(hostile.Get(bad)(Default).Status.ConsecutiveFailures).To(BeZero(), "an expression failure does not back KMS off")
		Expect(operatorManager.Done()).NotTo(BeClosed(), "the operator stopped")
		// Evaluation runs on the reconciling goroutine: once the attempts are handled, nothing of
		// them runs on.
		Eventually(runtime.NumGoroutine).Should(BeNumerically("<=", baseline))
	})
})
