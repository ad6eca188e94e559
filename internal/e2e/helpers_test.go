package e2e

import (
	"context"
	"fmt"
	"sync/atomic"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

var counter atomic.Int64

func bg() context.Context { return context.Background() }

// fixture is one test's world: a namespace, a KMS emulator over HTTPS and a credentials Secret
// holding a token the emulator accepts.
type fixture struct {
	ns    string
	kms   *kmstest.Server
	token string
}

const secretName = "kms-credentials"

func newFixture(opts ...kmstest.Option) *fixture {
	GinkgoHelper()
	n := counter.Add(1)
	f := &fixture{ns: fmt.Sprintf("e2e-%d", n), token: fmt.Sprintf("e2e-token-%d", n)}
	f.kms = kmstest.NewTLSServer(append([]kmstest.Option{kmstest.WithToken(f.token)}, opts...)...)
	DeferCleanup(f.kms.Close)
	Expect(k8sClient.Create(bg(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: f.ns}})).To(Succeed())
	f.putSecret(secretName, map[string]string{"token": f.token})
	return f
}

// putSecret creates or replaces a Secret of the fixture's namespace.
func (f *fixture) putSecret(name string, data map[string]string) {
	GinkgoHelper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.ns}, Data: map[string][]byte{}}
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	err := k8sClient.Create(bg(), s)
	if apierrors.IsAlreadyExists(err) {
		err = k8sClient.Update(bg(), s)
	}
	Expect(err).NotTo(HaveOccurred())
}

// child is defaultChild watching only the fixture's namespace, so that operators of other tests'
// namespaces never meet.
func (f *fixture) child() childConfig {
	c := defaultChild()
	c.WatchNamespaces = []string{f.ns}
	return c
}

func (f *fixture) selector(name string, mutate ...func(*kmsv1alpha1.KmsKeySelector)) *kmsv1alpha1.KmsKeySelector {
	sel := &kmsv1alpha1.KmsKeySelector{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.ns},
		Spec: kmsv1alpha1.KmsKeySelectorSpec{Provider: kmsv1alpha1.ProviderSpec{
			ProjectID:            kmstest.DefaultProjectID,
			Endpoint:             f.kms.URL,
			CredentialsSecretRef: kmsv1alpha1.SecretReference{Name: secretName},
		}},
	}
	for _, m := range mutate {
		m(sel)
	}
	return sel
}

func (f *fixture) create(sel *kmsv1alpha1.KmsKeySelector) *kmsv1alpha1.KmsKeySelector {
	GinkgoHelper()
	Expect(k8sClient.Create(bg(), sel)).To(Succeed())
	return sel
}

func get(g Gomega, sel *kmsv1alpha1.KmsKeySelector) *kmsv1alpha1.KmsKeySelector {
	out := &kmsv1alpha1.KmsKeySelector{}
	g.Expect(k8sClient.Get(bg(), client.ObjectKeyFromObject(sel), out)).To(Succeed())
	return out
}

// readyReason returns a function that reads the selector's Ready reason, for Eventually.
func readyReason(sel *kmsv1alpha1.KmsKeySelector) func(Gomega) string {
	return func(g Gomega) string {
		if c := meta.FindStatusCondition(get(g, sel).Status.Conditions, kmsv1alpha1.ConditionReady); c != nil {
			return c.Reason
		}
		return ""
	}
}

func readyMessage(sel *kmsv1alpha1.KmsKeySelector) string {
	GinkgoHelper()
	c := meta.FindStatusCondition(get(Default, sel).Status.Conditions, kmsv1alpha1.ConditionReady)
	Expect(c).NotTo(BeNil())
	return c.Message
}

// forceSync sets the force-sync annotation to a new value and returns it.
func forceSync(sel *kmsv1alpha1.KmsKeySelector) string {
	GinkgoHelper()
	value := fmt.Sprint(counter.Add(1))
	Eventually(func(g Gomega) {
		cur := get(g, sel)
		if cur.Annotations == nil {
			cur.Annotations = map[string]string{}
		}
		cur.Annotations[kmsv1alpha1.ForceSyncAnnotation] = value
		g.Expect(k8sClient.Update(bg(), cur)).To(Succeed())
	}).Should(Succeed())
	return value
}

// handled returns a function that succeeds once the force-sync value was handled and the
// selector is Synced.
func handled(sel *kmsv1alpha1.KmsKeySelector, value string) func(Gomega) {
	return func(g Gomega) {
		cur := get(g, sel)
		g.Expect(cur.Status.LastHandledForceSync).To(Equal(value))
		g.Expect(meta.FindStatusCondition(cur.Status.Conditions, kmsv1alpha1.ConditionReady)).To(HaveField("Reason", kmsv1alpha1.ReasonSynced))
	}
}

// states returns a function that reads the "<id>: <state>" entries of a ConfigMap.
func (f *fixture) states(name string) func(Gomega) map[string]string {
	return func(g Gomega) map[string]string {
		cm := &corev1.ConfigMap{}
		g.Expect(k8sClient.Get(bg(), types.NamespacedName{Namespace: f.ns, Name: name}, cm)).To(Succeed())
		return entries(cm.Data)
	}
}

// entries drops keys.json from ConfigMap data.
func entries(data map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range data {
		if k != "keys.json" {
			out[k] = v
		}
	}
	return out
}

func statesOf(keys ...kms.Key) map[string]string {
	out := map[string]string{}
	for _, k := range keys {
		out[k.ID] = k.State.String()
	}
	return out
}

// deleteAtCleanup deletes the selector when the test ends.
func deleteAtCleanup(sel *kmsv1alpha1.KmsKeySelector) {
	DeferCleanup(func() { Expect(client.IgnoreNotFound(k8sClient.Delete(bg(), sel))).To(Succeed()) })
}
