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
)

var (
	// errSelectorGone stops a write for a selector deleted since the reconcile began.
	errSelectorGone = errors.New("selector deleted")
	// errNothingToRepairFrom says that the ConfigMap needs repair and only a listing can give
	// its content.
	errNothingToRepairFrom = errors.New("no content to repair the ConfigMap from")
)

// currentTarget returns the target ConfigMap's metadata, nil when it does not exist, or a
// TargetConflict failure when it exists and this selector does not own it. The cache holds only
// the metadata of labelled ConfigMaps, so memory does not grow with their data.
func (r *KmsKeySelectorReconciler) currentTarget(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector) (*metav1.PartialObjectMetadata, error) {
	key := types.NamespacedName{Namespace: sel.Namespace, Name: targetName(sel)}
	cm := configMapMetadata()
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
		return nil, failedf(kmsv1alpha1.ReasonTargetConflict,
			"ConfigMap %q exists and is not managed by this selector; delete or rename it, or set spec.target.configMapName", key.Name)
	}
	return cm, nil
}

func configMapMetadata() *metav1.PartialObjectMetadata {
	cm := &metav1.PartialObjectMetadata{}
	cm.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("ConfigMap"))
	return cm
}

// keepTarget makes sure, between listings, that the ConfigMap still holds what was last synced,
// and repairs it when someone edited or deleted it: from memory, or else from its own keys.json
// when that still gives what was synced. It returns errNothingToRepairFrom when only a listing
// can give the content. A selector that never synced, or whose last attempt failed for good, has
// nothing to keep.
func (r *KmsKeySelectorReconciler) keepTarget(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, target *metav1.PartialObjectMetadata) error {
	if sel.Status.LastSyncTime == nil || failedPermanently(sel) {
		return nil
	}
	var stored *content
	var synced string
	if target != nil {
		synced = target.Annotations[kmsv1alpha1.ContentDigestAnnotation]
		if r.memory.holds(sel, target.ResourceVersion, synced) && metadataUpToDate(target, sel, synced) {
			return nil
		}
		var err error
		if stored, err = r.storedContent(ctx, sel, target); err != nil {
			return err
		}
		if stored != nil && stored.digest() == synced && metadataUpToDate(target, sel, synced) {
			return nil
		}
	}
	good, ok := r.memory.lastGood(sel)
	if !ok && stored != nil {
		tpls, err := parseTemplates(sel.Spec.Target.Template)
		if err != nil {
			return errNothingToRepairFrom
		}
		good, ok = rebuildSynced(*stored, synced, tpls)
	}
	if !ok {
		return errNothingToRepairFrom
	}
	_, err := r.writeTarget(ctx, sel, target, good)
	return err
}

// rebuildSynced renders again what stored's keys.json holds, if that is what was synced: the
// digest says so or, on a ConfigMap written before the digest annotation existed, the
// ConfigMap itself, whole.
func rebuildSynced(stored content, synced string, tpls *templates) (content, bool) {
	good, ok := rebuild(stored, tpls)
	return good, ok && (good.digest() == synced || (synced == "" && good.digest() == stored.digest()))
}

// storedContent reads the ConfigMap's data uncached, and remembers it when it is intact, so that
// the next check needs no read.
func (r *KmsKeySelectorReconciler) storedContent(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, target *metav1.PartialObjectMetadata) (*content, error) {
	cm := &corev1.ConfigMap{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(target), cm); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("getting ConfigMap %q: %w", target.Name, err)
	}
	c := content{Data: cm.Data, BinaryData: cm.BinaryData}
	if c.digest() == cm.Annotations[kmsv1alpha1.ContentDigestAnnotation] {
		r.memory.remember(sel, cm.ResourceVersion, c)
	}
	return &c, nil
}

// writeTarget applies c when the ConfigMap does not hold it, and removes entries that someone
// else added. It returns what the ConfigMap held before, nil when it did not exist. A ConfigMap
// whose resourceVersion is known to hold c is not read at all.
func (r *KmsKeySelectorReconciler) writeTarget(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, target *metav1.PartialObjectMetadata, c content) (*content, error) {
	digest := c.digest()
	var stored *content
	if target != nil {
		upToDate := metadataUpToDate(target, sel, digest)
		if upToDate && r.memory.holds(sel, target.ResourceVersion, digest) {
			return &c, nil
		}
		var err error
		if stored, err = r.storedContent(ctx, sel, target); err != nil {
			return nil, err
		}
		if upToDate && stored != nil && stored.digest() == digest {
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
			return nil, failedf(kmsv1alpha1.ReasonTargetTooLarge, "the API server refused ConfigMap %q as too large (%d bytes of data): %w; narrow spec.tags or spec.matches", *desired.Name, c.size(), err)
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

// deletedMeanwhile asks the API server whether the selector was deleted, or replaced, since this
// reconcile read it from the cache.
func (r *KmsKeySelectorReconciler) deletedMeanwhile(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector) (bool, error) {
	latest := &metav1.PartialObjectMetadata{}
	latest.SetGroupVersionKind(kmsv1alpha1.GroupVersion.WithKind("KmsKeySelector"))
	err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(sel), latest)
	switch {
	case apierrors.IsNotFound(err):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("getting selector: %w", err)
	}
	return latest.UID != sel.UID || !latest.DeletionTimestamp.IsZero(), nil
}

func desiredConfigMap(sel *kmsv1alpha1.KmsKeySelector, c content, digest string) *corev1ac.ConfigMapApplyConfiguration {
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

// recordChanges emits an event when the keys listed changed, whatever entries the templates
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
