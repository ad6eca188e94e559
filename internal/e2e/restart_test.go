package e2e

import (
	"maps"
	"sync"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// configMapHistory records every version of the namespace's ConfigMaps the API server sends to a
// watch, from a resourceVersion on, so that no intermediate state goes unseen.
type configMapHistory struct {
	mu       sync.Mutex
	versions []map[string]string
	w        watch.Interface
	done     chan struct{}
}

func watchConfigMaps(ns, name, fromVersion string) *configMapHistory {
	GinkgoHelper()
	w, err := k8sClient.Watch(bg(), &corev1.ConfigMapList{}, client.InNamespace(ns),
		&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: fromVersion}})
	Expect(err).NotTo(HaveOccurred())
	h := &configMapHistory{w: w, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for ev := range w.ResultChan() {
			cm, ok := ev.Object.(*corev1.ConfigMap)
			if !ok || cm.Name != name {
				continue
			}
			h.mu.Lock()
			if ev.Type == watch.Deleted {
				h.versions = append(h.versions, nil)
			} else {
				h.versions = append(h.versions, maps.Clone(cm.Data))
			}
			h.mu.Unlock()
		}
	}()
	DeferCleanup(h.stop)
	return h
}

func (h *configMapHistory) stop() {
	h.w.Stop()
	<-h.done
}

func (h *configMapHistory) seen() []map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]map[string]string(nil), h.versions...)
}

var _ = Describe("An operator restarted in the middle of a listing", func() {
	DescribeTable("never leaves a partial ConfigMap, and the next operator finishes the sync",
		func(sig syscall.Signal, graceful bool) {
			keys := kmstest.GenerateKeys(25, map[string]string{"restart": "yes"})
			f := newFixture(kmstest.WithKeys(keys...))
			first := startOperator("first", childOf(f))
			sel := f.Create(f.Selector("restart", testkit.WithPageSize(10)))
			Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
			cm := f.ConfigMap("restart")(Default)
			before := testkit.KeyStates(cm.Data)
			Expect(before).To(Equal(testkit.StatesOf(keys...)))
			history := watchConfigMaps(f.Namespace, "restart", cm.ResourceVersion)

			By("changing KMS, then holding the second page of the next listing")
			added := kmstest.GenerateKeys(5, map[string]string{"restart": "later"})
			Expect(f.KMS.PutKeys(added...)).To(Succeed())
			for _, k := range keys[:2] {
				Expect(f.KMS.SetKeyState(k.ID, kms.StateDisabled)).To(Succeed())
			}
			now := f.KMS.Keys()
			Expect(now).To(HaveLen(30))
			Expect(f.KMS.InjectFault(kmstest.Fault{Kind: kmstest.FaultLatency, Action: kmstest.ActionFilter, Skip: 1, Times: 1, Delay: 4 * time.Second})).To(Succeed())
			f.ForceSync(sel)
			Eventually(func() int64 { return f.KMS.Stats().FaultsApplied }).Should(Equal(int64(1)), "the second page is in flight")

			By("stopping the operator while the listing is in flight")
			Expect(first.stop(sig)).To(Equal(graceful))
			Expect(f.States("restart")(Default)).To(Equal(before))
			// Being stopped is not a KMS failure: no Warning, no failed condition.
			Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonSynced))
			Expect(f.Events(sel)(Default)).NotTo(ContainElement(HaveField("Note", ContainSubstring("context canceled"))),
				"the stopped operator reported its own shutdown as a failed sync")

			By("starting a new operator")
			second := startOperator("second", childOf(f))
			Eventually(synced(f, sel)).Should(Succeed())
			Expect(f.States("restart")(Default)).To(Equal(testkit.StatesOf(now...)))
			Expect(f.Get(sel)(Default).Status.KeyCount).To(Equal(ptr.To[int32](30)))

			Eventually(func() []map[string]string { return history.seen() }).ShouldNot(BeEmpty())
			history.stop()
			for i, v := range history.seen() {
				Expect(v).NotTo(BeNil(), "version %d: the ConfigMap was deleted", i)
				Expect(testkit.KeyStates(v)).To(Or(Equal(before), Equal(testkit.StatesOf(now...))),
					"version %d of the ConfigMap is neither the old nor the new complete listing", i)
			}
			Expect(history.seen()[len(history.seen())-1]).To(HaveLen(31))
			Expect(second.stop(syscall.SIGTERM)).To(BeTrue())
		},
		Entry("stopped: SIGTERM cancels the manager's context", syscall.SIGTERM, true),
		Entry("killed: SIGKILL", syscall.SIGKILL, false),
	)
})
