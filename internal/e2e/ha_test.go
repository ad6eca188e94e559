package e2e

import (
	"fmt"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/types"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// The leader election of the operators these specs run, shorter than controller-runtime's
// defaults (15s, 10s, 2s) so that a takeover after a crash does not wait long; the handover is the
// same.
const (
	leaseDuration = 4 * time.Second
	renewDeadline = 3 * time.Second
	retryPeriod   = 500 * time.Millisecond
)

var _ = Describe("High availability", func() {
	It("hands over to the standby when the leader stops, and loses no update made in between", func() {
		keys := kmstest.GenerateKeys(4, map[string]string{"ha": "yes"})
		staging := kmstest.GenerateKeys(2, map[string]string{"ha": "staging"})
		f := newFixture(kmstest.WithKeys(append(keys, staging...)...))
		c := electingChildOf(f)
		a, b := startOperator("a", c), startOperator("b", c)

		var leader, standby *operatorProcess
		Eventually(func() bool {
			switch {
			case !a.electedAt().IsZero():
				leader, standby = a, b
			case !b.electedAt().IsZero():
				leader, standby = b, a
			}
			return leader != nil
		}).Should(BeTrue())
		lease := &coordinationv1.Lease{}
		Expect(k8sClient.Get(bg(), types.NamespacedName{Namespace: f.Namespace, Name: "kms-key-sync.keysync.dev"}, lease)).To(Succeed())
		holder := *lease.Spec.HolderIdentity

		withTag := func(v string) func(*kmsv1alpha1.KmsKeySelector) {
			return testkit.WithTags(testkit.Tag("ha", v))
		}
		forced := f.Create(f.Selector("forced", withTag("yes")))
		// Another page size, so that the two listings are not coalesced: the standby listing
		// too would show as more than two calls.
		respec := f.Create(f.Selector("respec", withTag("yes"), testkit.WithPageSize(500)))
		for _, s := range []*kmsv1alpha1.KmsKeySelector{forced, respec} {
			Eventually(f.ReadyReason(s)).Should(Equal(kmsv1alpha1.ReasonSynced))
		}
		Expect(f.FilterCalls()).To(Equal(int64(2)), "the standby listed too")
		Expect(standby.electedAt()).To(BeZero())

		By("stopping the leader")
		stoppedAt := time.Now()
		Expect(leader.stop(syscall.SIGTERM)).To(BeTrue())

		By("changing KMS and the selectors while nobody leads")
		Expect(f.KMS.SetKeyState(keys[0].ID, kms.StateDisabled)).To(Succeed())
		extra := kmstest.GenerateKeys(1, map[string]string{"ha": "yes", "new": "yes"})
		Expect(f.KMS.PutKeys(extra...)).To(Succeed())
		f.ForceSync(forced)
		Eventually(func(g Gomega) {
			cur := f.Get(respec)(g)
			withTag("staging")(cur)
			g.Expect(k8sClient.Update(bg(), cur)).To(Succeed())
		}).Should(Succeed())
		f.Create(f.Selector("late", withTag("yes")))

		By("waiting for the standby to take over")
		Eventually(standby.electedAt, leaseDuration+2*retryPeriod+10*time.Second).ShouldNot(BeZero())
		takeover := standby.electedAt().Sub(stoppedAt)

		disabled := keys[0]
		disabled.State = kms.StateDisabled
		want := testkit.StatesOf(append(append([]kms.Key{disabled}, keys[1:]...), extra...)...)
		Eventually(synced(f, forced)).Should(Succeed())
		Eventually(f.States("forced")).Should(Equal(want))
		Eventually(f.States("respec")).Should(Equal(testkit.StatesOf(staging...)))
		Eventually(f.States("late")).Should(Equal(want))
		synced := time.Since(stoppedAt)

		Expect(k8sClient.Get(bg(), types.NamespacedName{Namespace: f.Namespace, Name: "kms-key-sync.keysync.dev"}, lease)).To(Succeed())
		Expect(*lease.Spec.HolderIdentity).NotTo(Equal(holder))

		report := fmt.Sprintf("leader stopped (SIGTERM: context cancelled, lease released as main.go does); standby elected after %v, all changes made in between synced after %v (lease %v, retry period %v)",
			takeover.Round(time.Millisecond), synced.Round(time.Millisecond), leaseDuration, retryPeriod)
		AddReportEntry("takeover", report)
		GinkgoWriter.Println(report)
		// Without LeaderElectionReleaseOnCancel the standby waits for the lease to expire.
		Expect(takeover).To(BeNumerically("<=", leaseDuration+2*retryPeriod+5*time.Second))
		Expect(standby.stop(syscall.SIGTERM)).To(BeTrue())
	})
})
