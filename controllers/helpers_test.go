package controllers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync/atomic"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

var namespaceCounter atomic.Int64

// fixture is one test's world: its own namespace, its own KMS emulator over HTTPS, and a
// credentials Secret holding a token the emulator accepts.
type fixture struct {
	ns    string
	kms   *kmstest.Server
	token string
}

const secretName = "kms-credentials"

func newFixture(opts ...kmstest.Option) *fixture {
	GinkgoHelper()
	n := namespaceCounter.Add(1)
	f := &fixture{ns: fmt.Sprintf("test-%d", n), token: fmt.Sprintf("token-%d", n)}
	f.kms = kmstest.NewTLSServer(append([]kmstest.Option{kmstest.WithToken(f.token)}, opts...)...)
	DeferCleanup(f.kms.Close)
	Expect(k8sClient.Create(ctx(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: f.ns}})).To(Succeed())
	f.putSecret(map[string]string{"token": f.token})
	return f
}

func ctx() context.Context { return context.Background() }

// putSecret creates or replaces the credentials Secret.
func (f *fixture) putSecret(data map[string]string) {
	GinkgoHelper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secretName, Namespace: f.ns}}
	s.Data = map[string][]byte{}
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	err := k8sClient.Create(ctx(), s)
	if apierrors.IsAlreadyExists(err) {
		err = k8sClient.Update(ctx(), s)
	}
	Expect(err).NotTo(HaveOccurred())
}

// selector returns a selector of this fixture's emulator; mutate adjusts its spec.
func (f *fixture) selector(name string, mutate ...func(*kmsv1alpha1.KmsKeySelector)) *kmsv1alpha1.KmsKeySelector {
	sel := &kmsv1alpha1.KmsKeySelector{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.ns},
		Spec: kmsv1alpha1.KmsKeySelectorSpec{
			Provider: kmsv1alpha1.ProviderSpec{
				ProjectID:            kmstest.DefaultProjectID,
				Endpoint:             f.kms.URL,
				CredentialsSecretRef: kmsv1alpha1.SecretReference{Name: secretName},
			},
		},
	}
	for _, m := range mutate {
		m(sel)
	}
	return sel
}

func (f *fixture) create(sel *kmsv1alpha1.KmsKeySelector) *kmsv1alpha1.KmsKeySelector {
	GinkgoHelper()
	Expect(k8sClient.Create(ctx(), sel)).To(Succeed())
	return sel
}

// get returns a function that fetches the selector, for Eventually.
func get(sel *kmsv1alpha1.KmsKeySelector) func(Gomega) *kmsv1alpha1.KmsKeySelector {
	return func(g Gomega) *kmsv1alpha1.KmsKeySelector {
		out := &kmsv1alpha1.KmsKeySelector{}
		g.Expect(k8sClient.Get(ctx(), client.ObjectKeyFromObject(sel), out)).To(Succeed())
		return out
	}
}

// readyReason returns a function that reads the selector's Ready reason, for Eventually.
func readyReason(sel *kmsv1alpha1.KmsKeySelector) func(Gomega) string {
	return func(g Gomega) string {
		c := meta.FindStatusCondition(get(sel)(g).Status.Conditions, kmsv1alpha1.ConditionReady)
		if c == nil {
			return ""
		}
		return c.Reason
	}
}

func readyCondition(sel *kmsv1alpha1.KmsKeySelector) *metav1.Condition {
	GinkgoHelper()
	out := &kmsv1alpha1.KmsKeySelector{}
	Expect(k8sClient.Get(ctx(), client.ObjectKeyFromObject(sel), out)).To(Succeed())
	return meta.FindStatusCondition(out.Status.Conditions, kmsv1alpha1.ConditionReady)
}

// configMap returns a function that fetches a ConfigMap of the fixture's namespace.
func (f *fixture) configMap(name string) func(Gomega) *corev1.ConfigMap {
	return func(g Gomega) *corev1.ConfigMap {
		cm := &corev1.ConfigMap{}
		g.Expect(k8sClient.Get(ctx(), types.NamespacedName{Namespace: f.ns, Name: name}, cm)).To(Succeed())
		return cm
	}
}

// states returns a function that reads the "<id>: <state>" entries of a ConfigMap.
func (f *fixture) states(name string) func(Gomega) map[string]string {
	return func(g Gomega) map[string]string {
		out := map[string]string{}
		for k, v := range f.configMap(name)(g).Data {
			if k != "keys.json" {
				out[k] = v
			}
		}
		return out
	}
}

// forceSync sets the force-sync annotation to a new value.
func forceSync(sel *kmsv1alpha1.KmsKeySelector) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		cur := get(sel)(g)
		if cur.Annotations == nil {
			cur.Annotations = map[string]string{}
		}
		cur.Annotations[kmsv1alpha1.ForceSyncAnnotation] = fmt.Sprint(namespaceCounter.Add(1))
		g.Expect(k8sClient.Update(ctx(), cur)).To(Succeed())
	}).Should(Succeed())
}

// waitSynced waits until the selector's latest force-sync or spec change has been handled.
func waitSynced(sel *kmsv1alpha1.KmsKeySelector) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		cur := get(sel)(g)
		g.Expect(cur.Status.ObservedGeneration).To(Equal(cur.Generation))
		g.Expect(cur.Status.LastHandledForceSync).To(Equal(cur.Annotations[kmsv1alpha1.ForceSyncAnnotation]))
		g.Expect(meta.FindStatusCondition(cur.Status.Conditions, kmsv1alpha1.ConditionReady)).NotTo(BeNil())
	}).Should(Succeed())
}

// statesOf is what the ConfigMap should hold for keys.
func statesOf(keys ...kms.Key) map[string]string {
	out := map[string]string{}
	for _, k := range keys {
		out[k.ID] = k.State.String()
	}
	return out
}

func key(id, alias string, state kms.State, tags map[string]string) kms.Key {
	return kms.Key{ID: id, Alias: alias, State: state, Tags: tags, Spec: "AES_256", Usage: "ENCRYPT_DECRYPT", Origin: "kms"}
}

// keysJSON decodes the keys.json entry of a ConfigMap.
func keysJSON(cm *corev1.ConfigMap) []map[string]any {
	GinkgoHelper()
	var out []map[string]any
	Expect(json.Unmarshal([]byte(cm.Data["keys.json"]), &out)).To(Succeed())
	return out
}

// eventReasons lists the reasons of the events about a selector, sorted.
func eventReasons(sel *kmsv1alpha1.KmsKeySelector) func(Gomega) []string {
	return func(g Gomega) []string {
		list := &eventsv1.EventList{}
		g.Expect(k8sClient.List(ctx(), list, client.InNamespace(sel.Namespace))).To(Succeed())
		var out []string
		for _, e := range list.Items {
			if e.Regarding.Name == sel.Name && e.Regarding.Kind == "KmsKeySelector" {
				n := 1
				if e.Series != nil {
					n = int(e.Series.Count)
				}
				for range n {
					out = append(out, e.Reason)
				}
			}
		}
		sort.Strings(out)
		return out
	}
}

// filterCalls is the number of successful ListKmsByTags filter calls the emulator answered.
func (f *fixture) filterCalls() int64 {
	return f.kms.Stats().ByAction["filter"]
}
