package testkit

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync/atomic"

	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// Fixture is one test's world: a namespace of its own, a KMS emulator over TLS of its own, and
// in the namespace a credentials Secret (CredentialsSecretName) holding a token the emulator
// accepts. Its methods fail through the Gomega it was made with; the readers return functions
// for Eventually and Consistently, or to call with a Gomega at once.
type Fixture struct {
	// Client is the client the fixture was made with; the readers read through it.
	Client client.Client
	// Namespace is the fixture's namespace.
	Namespace string
	// KMS is the fixture's emulator.
	KMS *kmstest.Server
	// Token is the IAM token KMS accepts and the credentials Secret holds.
	Token string

	g gomega.Gomega
}

// NewFixture creates a namespace named after prefix, an emulator over TLS with opts and the
// credentials Secret. g reports failures: gomega.Default in a Ginkgo suite. Call Close when the
// test ends.
func NewFixture(g gomega.Gomega, c client.Client, prefix string, opts ...kmstest.Option) *Fixture {
	ns := Namespace("")
	ns.GenerateName = prefix + "-"
	g.Expect(c.Create(context.Background(), ns)).WithOffset(1).To(gomega.Succeed())
	f := &Fixture{Client: c, Namespace: ns.Name, Token: "token-" + ns.Name, g: g}
	f.KMS = NewEmulator(f.Token, opts...)
	f.putSecret(2, CredentialsSecretName, map[string]string{kmsv1alpha1.SecretToken: f.Token})
	return f
}

// Close stops the emulator. The namespace stays: envtest runs no namespace controller to empty it.
func (f *Fixture) Close() { f.KMS.Close() }

// PutCredentials creates or replaces the credentials Secret with data.
func (f *Fixture) PutCredentials(data map[string]string) {
	f.putSecret(2, CredentialsSecretName, data)
}

// PutSecret creates or replaces a Secret of the fixture's namespace.
func (f *Fixture) PutSecret(name string, data map[string]string) {
	f.putSecret(2, name, data)
}

func (f *Fixture) putSecret(offset int, name string, data map[string]string) {
	s := Secret(f.Namespace, name, data)
	err := f.Client.Create(context.Background(), s)
	if apierrors.IsAlreadyExists(err) {
		err = f.Client.Update(context.Background(), s)
	}
	f.g.Expect(err).WithOffset(offset).NotTo(gomega.HaveOccurred())
}

// Selector returns a selector of the fixture's namespace and emulator, to create; mutate
// adjusts it.
func (f *Fixture) Selector(name string, mutate ...func(*kmsv1alpha1.KmsKeySelector)) *kmsv1alpha1.KmsKeySelector {
	return Selector(f.Namespace, name, f.KMS.URL, mutate...)
}

// Create creates the selector and returns it.
func (f *Fixture) Create(sel *kmsv1alpha1.KmsKeySelector) *kmsv1alpha1.KmsKeySelector {
	f.g.Expect(f.Client.Create(context.Background(), sel)).WithOffset(1).To(gomega.Succeed())
	return sel
}

// Get returns a function that reads the selector as it is now.
func (f *Fixture) Get(sel *kmsv1alpha1.KmsKeySelector) func(gomega.Gomega) *kmsv1alpha1.KmsKeySelector {
	return func(g gomega.Gomega) *kmsv1alpha1.KmsKeySelector {
		out := &kmsv1alpha1.KmsKeySelector{}
		g.Expect(f.Client.Get(context.Background(), client.ObjectKeyFromObject(sel), out)).To(gomega.Succeed())
		return out
	}
}

// ReadyCondition returns a function that reads the selector's Ready condition; nil while it has
// none.
func (f *Fixture) ReadyCondition(sel *kmsv1alpha1.KmsKeySelector) func(gomega.Gomega) *metav1.Condition {
	return func(g gomega.Gomega) *metav1.Condition { return ReadyCondition(f.Get(sel)(g)) }
}

// ReadyReason returns a function that reads the reason of the selector's Ready condition; ""
// while it has none.
func (f *Fixture) ReadyReason(sel *kmsv1alpha1.KmsKeySelector) func(gomega.Gomega) string {
	return func(g gomega.Gomega) string {
		if c := f.ReadyCondition(sel)(g); c != nil {
			return c.Reason
		}
		return ""
	}
}

// ConfigMap returns a function that reads a ConfigMap of the fixture's namespace.
func (f *Fixture) ConfigMap(name string) func(gomega.Gomega) *corev1.ConfigMap {
	return func(g gomega.Gomega) *corev1.ConfigMap {
		cm := &corev1.ConfigMap{}
		g.Expect(f.Client.Get(context.Background(), types.NamespacedName{Namespace: f.Namespace, Name: name}, cm)).To(gomega.Succeed())
		return cm
	}
}

// States returns a function that reads the "<id>: <State>" entries of a ConfigMap of the
// fixture's namespace; compare them with StatesOf.
func (f *Fixture) States(name string) func(gomega.Gomega) map[string]string {
	return func(g gomega.Gomega) map[string]string { return KeyStates(f.ConfigMap(name)(g).Data) }
}

// KeysJSON returns a function that decodes the keys.json of a ConfigMap of the fixture's
// namespace.
func (f *Fixture) KeysJSON(name string) func(gomega.Gomega) []map[string]any {
	return func(g gomega.Gomega) []map[string]any {
		out, err := KeysJSON(f.ConfigMap(name)(g))
		g.Expect(err).NotTo(gomega.HaveOccurred())
		return out
	}
}

// ForceSync sets the selector's force-sync annotation to a new value and returns the value.
func (f *Fixture) ForceSync(sel *kmsv1alpha1.KmsKeySelector) string {
	value, err := ForceSync(context.Background(), f.Client, sel)
	f.g.Expect(err).WithOffset(1).NotTo(gomega.HaveOccurred())
	return value
}

// Handled returns a function that succeeds once the operator has answered the selector's
// current generation and force-sync value: status.observedGeneration and
// status.lastHandledForceSync caught up, and Ready is set (whatever its reason).
func (f *Fixture) Handled(sel *kmsv1alpha1.KmsKeySelector) func(gomega.Gomega) {
	return func(g gomega.Gomega) {
		cur := f.Get(sel)(g)
		g.Expect(cur.Status.ObservedGeneration).To(gomega.Equal(cur.Generation), "status.observedGeneration")
		g.Expect(cur.Status.LastHandledForceSync).To(gomega.Equal(cur.Annotations[kmsv1alpha1.ForceSyncAnnotation]), "status.lastHandledForceSync")
		g.Expect(ReadyCondition(cur)).NotTo(gomega.BeNil(), "the Ready condition")
	}
}

// Events returns a function that lists the events about the selector.
func (f *Fixture) Events(sel *kmsv1alpha1.KmsKeySelector) func(gomega.Gomega) []eventsv1.Event {
	return func(g gomega.Gomega) []eventsv1.Event {
		list := &eventsv1.EventList{}
		g.Expect(f.Client.List(context.Background(), list, client.InNamespace(sel.Namespace))).To(gomega.Succeed())
		return EventsAbout(list.Items, sel)
	}
}

// Warnings returns a function that lists the Warning events about the selector.
func (f *Fixture) Warnings(sel *kmsv1alpha1.KmsKeySelector) func(gomega.Gomega) []eventsv1.Event {
	return func(g gomega.Gomega) []eventsv1.Event {
		var out []eventsv1.Event
		for _, e := range f.Events(sel)(g) {
			if e.Type == corev1.EventTypeWarning {
				out = append(out, e)
			}
		}
		return out
	}
}

// EventReasons returns a function that lists the reasons of the events about the selector as
// Reasons does: sorted, once per occurrence.
func (f *Fixture) EventReasons(sel *kmsv1alpha1.KmsKeySelector) func(gomega.Gomega) []string {
	return func(g gomega.Gomega) []string { return Reasons(f.Events(sel)(g)) }
}

// FilterCalls is the number of ListKmsByTags requests with action "filter" the emulator received.
func (f *Fixture) FilterCalls() int64 {
	return f.KMS.Stats().ByAction["filter"]
}

var forceSyncValues atomic.Int64

// ForceSync sets the selector's force-sync annotation to a value it never had and returns the
// value. It patches the annotation alone, so it cannot conflict with the operator's writes.
func ForceSync(ctx context.Context, c client.Client, sel *kmsv1alpha1.KmsKeySelector) (string, error) {
	value := strconv.FormatInt(forceSyncValues.Add(1), 10)
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{kmsv1alpha1.ForceSyncAnnotation: value}},
	})
	if err != nil {
		return "", err
	}
	target := &kmsv1alpha1.KmsKeySelector{ObjectMeta: metav1.ObjectMeta{Namespace: sel.Namespace, Name: sel.Name}}
	if err := c.Patch(ctx, target, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return "", fmt.Errorf("force-syncing selector %s/%s: %w", sel.Namespace, sel.Name, err)
	}
	return value, nil
}
