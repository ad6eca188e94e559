package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/metrics"
	"github.com/kms-key-sync/kms-key-sync/internal/render"
)

// errSelectorGone stops a write for a selector deleted since the reconcile began.
var errSelectorGone = errors.New("selector deleted")

// currentTarget returns the target ConfigMap's metadata, nil when it does not exist, or a
// TargetConflict failure when it exists and this selector does not own it. The cache holds only
// the metadata of labelled ConfigMaps, so memory does not grow with their data.
func (r *KmsKeySelectorReconciler) currentTarget(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector) (*metav1.PartialObjectMetadata, error) {
	key := types.NamespacedName{Namespace: sel.Namespace, Name: targetName(sel)}
	cm := ConfigMapMetadata()
	err := r.Get(ctx, key, cm)
	if apierrors.IsNotFound(err) {
		// The cache holds only labelled ConfigMaps; ask the API server about any other.
		err = r.APIReader.Get(ctx, key, cm)
	}
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("getting ConfigMap %q: %w", key.Name, err)
	case cm.Labels[kmsv1alpha1.SelectorLabel] != sel.Name || cm.Labels[kmsv1alpha1.ManagedByLabel] != kmsv1alpha1.ManagedByValue:
		return nil, newFailuref(kmsv1alpha1.ReasonTargetConflict,
			"ConfigMap %q exists and is not managed by this selector; delete or rename it, or set spec.target.configMapName", key.Name)
	}
	return cm, nil
}

// ConfigMapMetadata is the form in which the operator reads, caches and watches ConfigMaps:
// their metadata alone, so that memory does not grow with their data.
func ConfigMapMetadata() *metav1.PartialObjectMetadata {
	cm := &metav1.PartialObjectMetadata{}
	cm.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("ConfigMap"))
	return cm
}

// inspectTarget tells whether the ConfigMap still holds what the selector last synced and, when
// someone edited or deleted it, what to repair it from without listing: the content this process
// remembers, or else the ConfigMap's own keys.json when that still gives what was synced.
func (r *KmsKeySelectorReconciler) inspectTarget(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, target *metav1.PartialObjectMetadata) (targetState, error) {
	if sel.Status.LastSyncTime == nil {
		return targetState{intact: true}, nil
	}
	var stored *render.Content
	synced := syncedDigest(sel, target)
	if target != nil {
		if r.memory.holds(sel, target.ResourceVersion, synced) && metadataUpToDate(target, sel, synced) {
			return targetState{intact: true}, nil
		}
		var err error
		if stored, err = r.storedContent(ctx, sel, target, synced); err != nil {
			return targetState{}, err
		}
		if stored != nil && stored.Digest() == synced && metadataUpToDate(target, sel, synced) {
			return targetState{intact: true}, nil
		}
	}
	if good, ok := r.memory.lastGood(sel); ok {
		return targetState{repairFrom: &good}, nil
	}
	if stored == nil {
		return targetState{}, nil
	}
	exprs, err := render.Compile(sel.Spec.Target)
	if err != nil {
		return targetState{}, nil
	}
	if good, ok := rebuildSynced(ctx, *stored, synced, exprs); ok {
		return targetState{repairFrom: &good}, nil
	}
	return targetState{}, nil
}

// syncedDigest is the digest of what the selector last synced: its status says, where the tenant
// cannot write. A status written before it held the digest falls back to the ConfigMap's
// annotation, until the next listing records it.
func syncedDigest(sel *kmsv1alpha1.KmsKeySelector, target *metav1.PartialObjectMetadata) string {
	if sel.Status.ContentDigest != "" || target == nil {
		return sel.Status.ContentDigest
	}
	return target.Annotations[kmsv1alpha1.ContentDigestAnnotation]
}

// rebuildSynced renders again what stored's keys.json holds, if that is what was synced: the
// digest says so or, on a ConfigMap written before the digest annotation existed, the
// ConfigMap itself, whole.
func rebuildSynced(ctx context.Context, stored render.Content, synced string, exprs *render.Expressions) (render.Content, bool) {
	good, ok := render.Rebuild(ctx, stored, exprs)
	return good, ok && (good.Digest() == synced || (synced == "" && good.Digest() == stored.Digest()))
}

// storedContent reads the ConfigMap's data uncached, and remembers it when it is what was synced,
// of digest synced, so that the next check needs no read.
func (r *KmsKeySelectorReconciler) storedContent(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, target *metav1.PartialObjectMetadata, synced string) (*render.Content, error) {
	cm := &corev1.ConfigMap{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(target), cm); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("getting ConfigMap %q: %w", target.Name, err)
	}
	c := render.Content{Data: cm.Data, BinaryData: cm.BinaryData}
	if synced != "" && c.Digest() == synced {
		r.memory.remember(sel, cm.ResourceVersion, c)
	}
	return &c, nil
}

// writeTarget applies c when the ConfigMap does not hold it, and removes entries that someone
// else added. It returns what the ConfigMap held before, nil when it did not exist. A ConfigMap
// whose resourceVersion is known to hold c is not read at all.
func (r *KmsKeySelectorReconciler) writeTarget(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, target *metav1.PartialObjectMetadata, c render.Content) (*render.Content, error) {
	digest := c.Digest()
	var stored *render.Content
	if target != nil {
		upToDate := metadataUpToDate(target, sel, digest)
		if upToDate && r.memory.holds(sel, target.ResourceVersion, digest) {
			return &c, nil
		}
		var err error
		if stored, err = r.storedContent(ctx, sel, target, digest); err != nil {
			return nil, err
		}
		if upToDate && stored != nil && stored.Digest() == digest {
			return stored, nil
		}
	}
	// Deleted while KMS was listing: write nothing, or a Retain ConfigMap would outlive it.
	if gone, err := r.deletedMeanwhile(ctx, sel); gone || err != nil {
		if err == nil {
			err = errSelectorGone
		}
		return nil, err
	}
	desired := desiredConfigMap(sel, c, digest)
	if err := r.Apply(ctx, desired, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		if tooLarge(err) {
			return nil, newFailuref(kmsv1alpha1.ReasonTargetTooLarge, "the API server refused ConfigMap %q as too large (%d bytes of data): %w; narrow spec.tags or spec.matches", *desired.Name, c.Size(), err)
		}
		return nil, fmt.Errorf("applying ConfigMap %q: %w", *desired.Name, err)
	}
	metrics.ConfigMapWrites.Inc()
	// Apply filled desired with the ConfigMap as stored, other managers' entries included.
	applied := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: *desired.Name, Namespace: *desired.Namespace, ResourceVersion: *desired.ResourceVersion},
		Data:       desired.Data,
		BinaryData: desired.BinaryData,
	}
	if patch := removeStrayEntries(applied, c); patch != nil {
		if err := r.Patch(ctx, applied, patch, client.FieldOwner(FieldOwner)); err != nil {
			return nil, fmt.Errorf("removing foreign entries from ConfigMap %q: %w", applied.Name, err)
		}
	}
	r.memory.remember(sel, applied.ResourceVersion, c)
	return stored, nil
}

// tooLarge tells whether the API server or etcd refused an object for its size.
func tooLarge(err error) bool {
	return apierrors.IsRequestEntityTooLargeError(err) || strings.Contains(err.Error(), "request is too large")
}

// deletedMeanwhile tells whether the selector was deleted, or replaced, since this reconcile read
// it from the cache. For a ConfigMap the selector owns, the cache, which the watch keeps up to
// date, answers: one written in the moment before the cache sees a deletion goes with its owner,
// through the garbage collector. A Retain ConfigMap has no owner and would outlive the selector,
// so for it the API server is asked.
func (r *KmsKeySelectorReconciler) deletedMeanwhile(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector) (bool, error) {
	key := client.ObjectKeyFromObject(sel)
	var latest metav1.ObjectMeta
	var err error
	if deletionPolicy(sel.Spec) == kmsv1alpha1.DeletionPolicyRetain {
		stored := &metav1.PartialObjectMetadata{}
		stored.SetGroupVersionKind(kmsv1alpha1.GroupVersion.WithKind("KmsKeySelector"))
		err = r.APIReader.Get(ctx, key, stored)
		latest = stored.ObjectMeta
	} else {
		cached := &kmsv1alpha1.KmsKeySelector{}
		err = r.Get(ctx, key, cached, client.UnsafeDisableDeepCopy)
		latest = cached.ObjectMeta
	}
	switch {
	case apierrors.IsNotFound(err):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("getting selector: %w", err)
	}
	return latest.UID != sel.UID || !latest.DeletionTimestamp.IsZero(), nil
}

func desiredConfigMap(sel *kmsv1alpha1.KmsKeySelector, c render.Content, digest string) *corev1ac.ConfigMapApplyConfiguration {
	cm := corev1ac.ConfigMap(targetName(sel), sel.Namespace).
		WithLabels(map[string]string{
			kmsv1alpha1.ManagedByLabel: kmsv1alpha1.ManagedByValue,
			kmsv1alpha1.SelectorLabel:  sel.Name,
		}).
		WithAnnotations(map[string]string{kmsv1alpha1.ContentDigestAnnotation: digest}).
		WithData(c.Data)
	if len(c.BinaryData) > 0 {
		cm.WithBinaryData(c.BinaryData)
	}
	if deletionPolicy(sel.Spec) == kmsv1alpha1.DeletionPolicyDelete {
		cm.WithOwnerReferences(metav1ac.OwnerReference().
			WithAPIVersion(kmsv1alpha1.GroupVersion.String()).
			WithKind("KmsKeySelector").
			WithName(sel.Name).
			WithUID(sel.UID).
			WithController(true).
			WithBlockOwnerDeletion(true))
	}
	return cm
}

// metadataUpToDate tells whether target carries the labels, the content digest and the owner
// reference that the selector asks for.
func metadataUpToDate(target *metav1.PartialObjectMetadata, sel *kmsv1alpha1.KmsKeySelector, digest string) bool {
	if target.Labels[kmsv1alpha1.ManagedByLabel] != kmsv1alpha1.ManagedByValue ||
		target.Labels[kmsv1alpha1.SelectorLabel] != sel.Name ||
		target.Annotations[kmsv1alpha1.ContentDigestAnnotation] != digest {
		return false
	}
	owned := false
	for _, ref := range target.OwnerReferences {
		owned = owned || ref.UID == sel.UID
	}
	return owned == (deletionPolicy(sel.Spec) == kmsv1alpha1.DeletionPolicyDelete)
}

// recordChanges emits an event when the keys listed changed, whatever entries the expressions
// wrote, and a warning for every key that moved to Disabled or PendingDeletion. An unchanged
// refresh emits nothing.
func (r *KmsKeySelectorReconciler) recordChanges(sel *kmsv1alpha1.KmsKeySelector, previous, current syncedKeys) {
	diff := diffKeys(previous, current)
	if diff.empty() {
		return
	}
	r.Recorder.Eventf(sel, nil, corev1.EventTypeNormal, "KeysChanged", "Sync", "%s", diff.String())
	for _, state := range []kms.State{kms.StateDisabled, kms.StatePendingDeletion} {
		if ids := diff.movedTo[state.String()]; len(ids) > 0 {
			r.Recorder.Eventf(sel, nil, corev1.EventTypeWarning, "Key"+state.String(), "Sync",
				"%d key(s) moved to %s: %s", len(ids), state, abbreviate(ids, 10))
		}
	}
}
