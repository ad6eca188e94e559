package controllers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/keysource"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/metrics"
)

// FieldOwner is the server-side apply field manager of everything the operator writes.
const FieldOwner = "kms-key-sync"

// KeyLister lists the keys a selector asks for, completely or not at all.
type KeyLister interface {
	ListKeys(ctx context.Context, req keysource.Request) ([]kms.Key, error)
}

var _ KeyLister = (*keysource.Coalescing)(nil)

// KmsKeySelectorReconciler keeps each selector's ConfigMap in step with KMS.
type KmsKeySelectorReconciler struct {
	client.Client
	// APIReader reads what the cache does not hold: Secrets, and ConfigMaps without our label.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Keys      KeyLister
	// AllowInsecureEndpoints permits plain http:// endpoints, which carry credentials in clear text.
	AllowInsecureEndpoints bool
	// SyncTimeout bounds one complete listing, so a hung KMS never pins a worker.
	SyncTimeout time.Duration
	// Backoff is the first retry delay after a failure; it doubles up to the refresh interval.
	Backoff time.Duration

	schedule schedule
}

// +kubebuilder:rbac:groups=kms.keysync.dev,resources=kmskeyselectors,verbs=get;list;watch
// +kubebuilder:rbac:groups=kms.keysync.dev,resources=kmskeyselectors/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile gets the selector, syncs it, and writes its status when the status changed.
func (r *KmsKeySelectorReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, err error) {
	sel := &kmsv1alpha1.KmsKeySelector{}
	if err := r.Get(ctx, req.NamespacedName, sel); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("getting selector: %w", err)
	}
	if !sel.DeletionTimestamp.IsZero() {
		// The ConfigMap is garbage-collected through its owner reference, or retained.
		r.forget(req.NamespacedName)
		return ctrl.Result{}, nil
	}

	before := sel.Status.DeepCopy()
	defer func() {
		if equality.Semantic.DeepEqual(before, &sel.Status) {
			return
		}
		// A status lost to shutdown is recomputed by the next reconcile.
		if patchErr := r.patchStatus(ctx, sel, before); patchErr != nil && ctx.Err() == nil {
			err = errors.Join(err, patchErr)
		}
	}()
	return r.reconcileNormal(ctx, sel)
}

func (r *KmsKeySelectorReconciler) forget(key types.NamespacedName) {
	r.schedule.forget(key)
	metrics.ForgetSelector(key.Namespace, key.Name)
}

func (r *KmsKeySelectorReconciler) patchStatus(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, before *kmsv1alpha1.KmsKeySelectorStatus) error {
	base := sel.DeepCopy()
	base.Status = *before
	if err := r.Status().Patch(ctx, sel, client.MergeFrom(base)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("patching status: %w", err)
	}
	return nil
}

func (r *KmsKeySelectorReconciler) reconcileNormal(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector) (ctrl.Result, error) {
	state := r.schedule.get(sel)

	if sel.Spec.Suspend {
		setReady(sel, metav1.ConditionFalse, kmsv1alpha1.ReasonSuspended, "Syncing is suspended; the ConfigMap keeps its last content")
		metrics.SelectorReady.WithLabelValues(sel.Namespace, sel.Name).Set(0)
		return ctrl.Result{}, nil
	}

	current, err := r.currentTarget(ctx, sel)
	if err != nil {
		var conflict *targetConflictError
		if errors.As(err, &conflict) {
			return r.failed(ctx, sel, state, kmsv1alpha1.ReasonTargetConflict, err), nil
		}
		return ctrl.Result{}, err
	}

	now := time.Now()
	if lastGood := state.lastGood(); !state.due(sel, now) && lastGood != nil {
		if err := r.writeTarget(ctx, sel, state, current, *lastGood); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{RequeueAfter: state.nextSync.Sub(now)}, nil
	}
	return r.sync(ctx, sel, state, current)
}

// sync lists the keys and, only once the listing is complete, writes the ConfigMap and status.
func (r *KmsKeySelectorReconciler) sync(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, state *selectorState, current *metav1.PartialObjectMetadata) (ctrl.Result, error) {
	fresh, requested := state.wantsFresh(sel), state.requested(sel)
	state.handled(sel)
	request, reason, err := r.listRequest(ctx, sel)
	if err != nil {
		if reason == "" {
			return ctrl.Result{}, err
		}
		return r.failed(ctx, sel, state, reason, err), nil
	}
	request.Fresh = fresh
	if !requested {
		request.NotBefore = state.nextSync
	}
	if state.failures > 0 {
		// While failing, the backoff above is the retry policy: one call per attempt, so a
		// persistent fault costs no more than one call per backoff step.
		request.MaxAttempts = 1
	}
	sel.Status.LastHandledForceSync = sel.Annotations[kmsv1alpha1.ForceSyncAnnotation]

	listCtx, cancel := context.WithTimeout(ctx, r.SyncTimeout)
	keys, err := r.Keys.ListKeys(listCtx, request)
	cancel()
	if err != nil && ctx.Err() != nil {
		// The operator is stopping: not a KMS failure. The next operator syncs again.
		return ctrl.Result{}, nil
	}
	if err != nil {
		return r.failed(ctx, sel, state, reasonForKMSError(err), fmt.Errorf("listing KMS keys: %w", err)), nil
	}

	rendered, err := renderContent(keys)
	if err != nil {
		reason := kmsv1alpha1.ReasonKMSRequestFailed
		var tooLarge *tooLargeError
		if errors.As(err, &tooLarge) {
			reason = kmsv1alpha1.ReasonTargetTooLarge
		}
		return r.failed(ctx, sel, state, reason, err), nil
	}

	previous := state.lastGood()
	if previous == nil && current != nil {
		stored, err := r.getConfigMap(ctx, current)
		if err != nil {
			return ctrl.Result{}, err
		}
		previous = &content{Data: stored.Data, BinaryData: stored.BinaryData}
	}
	if err := r.writeTarget(ctx, sel, state, current, rendered); err != nil {
		if errors.Is(err, errSelectorGone) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	r.recordChanges(sel, previous, rendered)

	now := time.Now()
	state.succeeded(rendered, now, refreshInterval(sel), request.Phase(), !requested)
	setSynced(sel, keys, now)
	recordSynced(sel)
	return ctrl.Result{RequeueAfter: state.nextSync.Sub(now)}, nil
}

// errSelectorGone stops a write for a selector deleted since the reconcile began.
var errSelectorGone = errors.New("selector deleted")

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

// failed records a failure in status and an event, and schedules a retry with backoff.
func (r *KmsKeySelectorReconciler) failed(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, state *selectorState, reason string, cause error) ctrl.Result {
	log.FromContext(ctx).Info("Sync failed", "reason", reason, "error", cause.Error())
	setReady(sel, metav1.ConditionFalse, reason, cause.Error())
	recordFailed(sel, reason)
	r.Recorder.Eventf(sel, nil, corev1.EventTypeWarning, reason, "Sync", "%s", cause.Error())
	if reason == kmsv1alpha1.ReasonInvalidSpec || reason == kmsv1alpha1.ReasonInsecureEndpoint {
		// Nothing changes until the spec or the operator's flags do; a spec change triggers us.
		state.failedPermanently()
		return ctrl.Result{}
	}
	delay := state.failed(time.Now(), r.Backoff, refreshInterval(sel), retryAfter(cause))
	return ctrl.Result{RequeueAfter: delay}
}

// listRequest builds the KMS request from the spec and the credentials Secret. A non-empty
// reason means the failure belongs in the status; otherwise the error is transient.
func (r *KmsKeySelectorReconciler) listRequest(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector) (keysource.Request, string, error) {
	filter := filterFromSpec(sel.Spec)
	if err := filter.Validate(); err != nil {
		return keysource.Request{}, kmsv1alpha1.ReasonInvalidSpec, fmt.Errorf("spec: %w", err)
	}
	endpoint, err := endpointFor(sel.Spec.Provider)
	if err != nil {
		return keysource.Request{}, kmsv1alpha1.ReasonInvalidSpec, err
	}
	if endpoint.Scheme == "http" && !r.AllowInsecureEndpoints {
		return keysource.Request{}, kmsv1alpha1.ReasonInsecureEndpoint, fmt.Errorf(
			"spec.provider.endpoint %q is plain http and would send credentials in clear text; use https, or run the operator with --allow-insecure-endpoints", endpoint.String())
	}

	ref := sel.Spec.Provider.CredentialsSecretRef.Name
	secret := &corev1.Secret{}
	// client-go dumps response bodies at high verbosity; the Secret's must never reach a log.
	quiet := logr.NewContext(ctx, logr.Discard())
	if err := r.APIReader.Get(quiet, types.NamespacedName{Namespace: sel.Namespace, Name: ref}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return keysource.Request{}, kmsv1alpha1.ReasonCredentialsNotFound, fmt.Errorf("secret %q named by spec.provider.credentialsSecretRef does not exist in namespace %q", ref, sel.Namespace)
		}
		return keysource.Request{}, "", fmt.Errorf("getting secret %q: %w", ref, err)
	}
	creds, err := credentialsFromSecret(secret)
	if err != nil {
		return keysource.Request{}, kmsv1alpha1.ReasonCredentialsInvalid, fmt.Errorf("secret %q: %w", ref, err)
	}
	return keysource.Request{
		Endpoint:    endpoint.String(),
		ProjectID:   sel.Spec.Provider.ProjectID,
		Credentials: creds,
		PageSize:    pageSize(sel.Spec),
		Filter:      filter,
	}, "", nil
}

// currentTarget returns the target ConfigMap's metadata, nil when it does not exist, or a
// targetConflictError when it exists and this selector does not own it. The cache holds only
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
		return nil, &targetConflictError{name: key.Name}
	}
	return cm, nil
}

func configMapMetadata() *metav1.PartialObjectMetadata {
	cm := &metav1.PartialObjectMetadata{}
	cm.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("ConfigMap"))
	return cm
}

// getConfigMap reads a ConfigMap whole, uncached: only after a restart, or when it changed since
// this operator wrote it.
func (r *KmsKeySelectorReconciler) getConfigMap(ctx context.Context, current *metav1.PartialObjectMetadata) (*corev1.ConfigMap, error) {
	cm := &corev1.ConfigMap{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(current), cm); err != nil {
		return nil, fmt.Errorf("getting ConfigMap %q: %w", current.Name, err)
	}
	return cm, nil
}

type targetConflictError struct{ name string }

func (e *targetConflictError) Error() string {
	return fmt.Sprintf("ConfigMap %q exists and is not managed by this selector; delete or rename it, or set spec.target.configMapName", e.name)
}

// writeTarget applies the content when the ConfigMap differs from what it should be, and removes
// entries that someone else added. A ConfigMap whose resourceVersion is the one this operator
// wrote, with the same content, is not read at all.
func (r *KmsKeySelectorReconciler) writeTarget(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, state *selectorState, current *metav1.PartialObjectMetadata, c content) error {
	desired := desiredConfigMap(sel, c)
	digest := c.digest()
	if current != nil && metadataUpToDate(current, desired) {
		if state.wrote(current.ResourceVersion, digest) {
			return nil
		}
		stored, err := r.getConfigMap(ctx, current)
		if err != nil {
			return err
		}
		if sameEntries(stored.Data, desired.Data) && sameEntries(stored.BinaryData, desired.BinaryData) {
			state.written(stored.ResourceVersion, digest)
			return nil
		}
	}
	// Deleted while KMS was listing: write nothing, or a Retain ConfigMap would outlive it.
	if gone, err := r.deletedMeanwhile(ctx, sel); gone || err != nil {
		return cmp.Or(err, errSelectorGone)
	}
	if err := r.Apply(ctx, desired, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying ConfigMap %q: %w", *desired.Name, err)
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
			return fmt.Errorf("removing foreign entries from ConfigMap %q: %w", applied.Name, err)
		}
	}
	state.written(applied.ResourceVersion, digest)
	return nil
}

func desiredConfigMap(sel *kmsv1alpha1.KmsKeySelector, c content) *corev1ac.ConfigMapApplyConfiguration {
	cm := corev1ac.ConfigMap(targetName(sel), sel.Namespace).
		WithLabels(map[string]string{
			kmsv1alpha1.ManagedByLabel: kmsv1alpha1.ManagedByValue,
			kmsv1alpha1.SelectorLabel:  sel.Name,
		}).
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

// metadataUpToDate tells whether current carries the labels and owner reference desired says.
func metadataUpToDate(current *metav1.PartialObjectMetadata, desired *corev1ac.ConfigMapApplyConfiguration) bool {
	for k, v := range desired.Labels {
		if current.Labels[k] != v {
			return false
		}
	}
	owned := false
	for _, ref := range current.OwnerReferences {
		if desired.OwnerReferences != nil && ref.UID == *desired.OwnerReferences[0].UID {
			owned = true
		}
	}
	return owned == (len(desired.OwnerReferences) > 0)
}

// recordChanges emits an event when the keys changed, and a warning for every key that moved to
// Disabled or PendingDeletion. An unchanged refresh emits nothing.
func (r *KmsKeySelectorReconciler) recordChanges(sel *kmsv1alpha1.KmsKeySelector, previous *content, current content) {
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

// SetupWithManager watches selectors (spec and force-sync annotation changes) and the labelled
// ConfigMaps they write, so that an edited or deleted ConfigMap is repaired at once.
func (r *KmsKeySelectorReconciler) SetupWithManager(mgr ctrl.Manager, maxConcurrent int) error {
	if r.SyncTimeout == 0 {
		r.SyncTimeout = 2 * time.Minute
	}
	if r.Backoff == 0 {
		r.Backoff = 5 * time.Second
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&kmsv1alpha1.KmsKeySelector{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{},
			predicate.AnnotationChangedPredicate{},
		))).
		WatchesMetadata(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(selectorForConfigMap)).
		WithOptions(controller.Options{MaxConcurrentReconciles: maxConcurrent}).
		Named("kmskeyselector").
		Complete(r)
}

func selectorForConfigMap(_ context.Context, obj client.Object) []reconcile.Request {
	name, ok := obj.GetLabels()[kmsv1alpha1.SelectorLabel]
	if !ok {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: obj.GetNamespace(), Name: name}}}
}

// retryAfter is how long KMS asked callers to wait, or zero.
func retryAfter(err error) time.Duration {
	var apiErr *kms.APIError
	if errors.As(err, &apiErr) {
		return apiErr.RetryAfter
	}
	return 0
}

func reasonForKMSError(err error) string {
	var invalid *kms.ValidationError
	switch {
	case kms.IsAuthFailure(err):
		return kmsv1alpha1.ReasonCredentialsInvalid
	case kms.IsThrottled(err):
		return kmsv1alpha1.ReasonKMSThrottled
	case errors.As(err, &invalid):
		return kmsv1alpha1.ReasonInvalidSpec
	default:
		return kmsv1alpha1.ReasonKMSRequestFailed
	}
}

// setReady sets the Ready condition, and with it the generation the status speaks for.
func setReady(sel *kmsv1alpha1.KmsKeySelector, status metav1.ConditionStatus, reason, message string) {
	sel.Status.ObservedGeneration = sel.Generation
	meta.SetStatusCondition(&sel.Status.Conditions, metav1.Condition{
		Type:               kmsv1alpha1.ConditionReady,
		Status:             status,
		Reason:             reason,
		Message:            message,
		ObservedGeneration: sel.Generation,
	})
}

func endpointFor(p kmsv1alpha1.ProviderSpec) (*url.URL, error) {
	raw := p.Endpoint
	if raw == "" {
		var err error
		if raw, err = kms.EndpointForRegion(p.Region); err != nil {
			return nil, fmt.Errorf("spec.provider.region: %w", err)
		}
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("spec.provider.endpoint %q is not an absolute http or https URL", raw)
	}
	return u, nil
}
