package testkit

import (
	"context"
	"encoding/json"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

// PokeAnnotation is an annotation the operator gives no meaning to. Changing it makes the
// operator reconcile the selector, as any annotation change does, without asking for a sync.
const PokeAnnotation = "test.kms.keysync.dev/poke"

var pokes atomic.Int64

// Poke changes the selector's PokeAnnotation, so that the operator reconciles it.
func Poke(ctx context.Context, c client.Client, sel *kmsv1alpha1.KmsKeySelector) error {
	return mergePatch(ctx, c, sel, false, map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{PokeAnnotation: strconv.FormatInt(pokes.Add(1), 10)}},
	})
}

// RefreshNow makes the operator run the scheduled refreshes of sels now, rather than at their
// slots: it waits for the next whole second (the status stores seconds), writes that second
// into status.nextSyncTime, which the operator honours before any slot, and pokes each selector.
// It returns once the operator has handled each refresh: nextSyncTime cleared or moved past that
// second, and lastSyncTime reached it (a success, which clearing nextSyncTime changed) or
// consecutiveFailures grew (a failure). The selectors
// given together share that second as their slot, as selectors asking the same question do.
//
// The operator answers a refresh with any listing of the same question made since its slot
// began, or younger than its coalescing window: to make a refresh list KMS anew, call RefreshNow
// at least that window after the last listing.
func (f *Fixture) RefreshNow(sels ...*kmsv1alpha1.KmsKeySelector) {
	ctx := context.Background()
	failures := make([]int32, len(sels))
	for i, sel := range sels {
		failures[i] = f.Get(sel)(f.g).Status.ConsecutiveFailures
	}
	slot := time.Now().Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(slot))
	for _, sel := range sels {
		f.g.Expect(mergePatch(ctx, f.Client, sel, true, map[string]any{
			"status": map[string]any{"nextSyncTime": metav1.NewTime(slot)},
		})).WithOffset(1).To(gomega.Succeed())
	}
	for _, sel := range sels {
		f.g.Expect(Poke(ctx, f.Client, sel)).WithOffset(1).To(gomega.Succeed())
	}
	for i, sel := range sels {
		f.g.Eventually(func(g gomega.Gomega) {
			st := f.Get(sel)(g).Status
			if st.NextSyncTime != nil {
				g.Expect(st.NextSyncTime.Time).To(gomega.BeTemporally(">", slot), "status.nextSyncTime")
			}
			succeeded := st.LastSyncTime != nil && !st.LastSyncTime.Time.Before(slot)
			g.Expect(succeeded || st.ConsecutiveFailures > failures[i]).To(gomega.BeTrue(),
				"the refresh of %s neither succeeded (lastSyncTime %v) nor failed (consecutiveFailures %d)", sel.Name, st.LastSyncTime, st.ConsecutiveFailures)
		}).WithOffset(1).Should(gomega.Succeed())
	}
}

// mergePatch applies a JSON merge patch to the selector, or to its status.
func mergePatch(ctx context.Context, c client.Client, sel *kmsv1alpha1.KmsKeySelector, status bool, patch map[string]any) error {
	raw, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	target := &kmsv1alpha1.KmsKeySelector{ObjectMeta: metav1.ObjectMeta{Namespace: sel.Namespace, Name: sel.Name}}
	if status {
		return c.Status().Patch(ctx, target, client.RawPatch(types.MergePatchType, raw))
	}
	return c.Patch(ctx, target, client.RawPatch(types.MergePatchType, raw))
}
