package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
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

// KmsKeySelectorReconciler keeps each selector's ConfigMap in step with KMS. What it does next is
// decided by what the API server stores (the selector's status and the ConfigMap's content
// digest), so a restart or a new leader loses nothing and lists nothing early.
type KmsKeySelectorReconciler struct {
	client.Client
	// APIReader reads what the cache does not hold: Secrets, and ConfigMaps' data.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Keys      KeyLister
	// Identities hands out the credentials of keyless providers.
	Identities Identities
	Options    Options

	memory memory
}

// +kubebuilder:rbac:groups=kms.keysync.dev,resources=kmskeyselectors,verbs=get;list;watch
// +kubebuilder:rbac:groups=kms.keysync.dev,resources=kmskeyselectors/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=kms.keysync.dev,resources=kmskeyselectors/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups="",resources=serviceaccounts/token,verbs=create
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=get
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=kms.keysync.dev,resources=kmsproviders;clusterkmsproviders,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch

// Reconcile gets the selector, brings it up to date, and writes its status when it changed.
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

	r.memory.catchUp(sel)
	before := sel.Status.DeepCopy()
	defer func() {
		if equality.Semantic.DeepEqual(before, &sel.Status) {
			return
		}
		// A status that is not written is recomputed by the next attempt: the schedule and what
		// was handled are read from it, so the attempt is made again.
		over := sel.ResourceVersion
		if patchErr := r.patchStatus(ctx, sel, before); patchErr != nil {
			if ctx.Err() == nil {
				err = errors.Join(err, patchErr)
			}
			return
		}
		r.memory.statusWritten(sel, over)
	}()
	return r.reconcileNormal(ctx, sel)
}

func (r *KmsKeySelectorReconciler) reconcileNormal(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector) (ctrl.Result, error) {
	if sel.Spec.Suspend {
		setReady(sel, metav1.ConditionFalse, kmsv1alpha1.ReasonSuspended, "Syncing is suspended; the ConfigMap keeps its last content")
		sel.Status.NextSyncTime = nil
		sel.Status.LastHandledForceSync = sel.Annotations[kmsv1alpha1.ForceSyncAnnotation]
		metrics.SelectorReady.WithLabelValues(sel.Namespace, sel.Name).Set(0)
		return ctrl.Result{}, nil
	}
	now := r.Options.Now()
	// The provider is checked on every reconcile, so that a selector stops at once when its
	// namespace may no longer use it.
	p, err := r.resolveProvider(ctx, sel)
	if err != nil {
		return r.result(ctx, sel, now, err)
	}
	target, err := r.currentTarget(ctx, sel)
	if err != nil {
		return r.result(ctx, sel, now, err)
	}
	if due, wait := nextListing(sel, now); !due && !failedOnProvider(sel) {
		switch err := r.keepTarget(ctx, sel, target); {
		case err == nil:
			return ctrl.Result{RequeueAfter: wait}, nil
		case !errors.Is(err, errNothingToRepairFrom):
			return ctrl.Result{}, err
		}
		log.FromContext(ctx).Info("Listing early to repair the ConfigMap", "configMap", targetName(sel))
	}
	return r.result(ctx, sel, now, r.sync(ctx, sel, p, target, now))
}

// result turns the outcome of an attempt into the status and the next reconcile: a success waits
// for the next refresh, a failure the status reports is retried with backoff, and any other error
// goes back to the workqueue with the status unchanged.
func (r *KmsKeySelectorReconciler) result(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, now time.Time, err error) (ctrl.Result, error) {
	switch {
	case err == nil:
		return ctrl.Result{RequeueAfter: sel.Status.NextSyncTime.Sub(now)}, nil
	case errors.Is(err, errSelectorGone), ctx.Err() != nil:
		// Deleted meanwhile, or the operator is stopping: the next operator syncs again.
		return ctrl.Result{}, nil
	}
	f := asFailure(err)
	if f == nil {
		return ctrl.Result{}, err
	}
	log.FromContext(ctx).Info("Sync failed", "reason", f.reason, "error", err.Error())
	setReady(sel, metav1.ConditionFalse, f.reason, err.Error())
	sel.Status.LastHandledForceSync = sel.Annotations[kmsv1alpha1.ForceSyncAnnotation]
	recordFailed(sel, f.reason)
	r.Recorder.Eventf(sel, nil, corev1.EventTypeWarning, f.reason, "Sync", "%s", err.Error())
	if !f.retryAt.IsZero() {
		sel.Status.NextSyncTime = &metav1.Time{Time: f.retryAt}
		return ctrl.Result{RequeueAfter: f.retryAt.Sub(now)}, nil
	}
	sel.Status.ConsecutiveFailures++
	if permanent(f.reason) {
		// Nothing changes until the spec or the operator's flags do; a spec change triggers us.
		sel.Status.NextSyncTime = nil
		return ctrl.Result{}, nil
	}
	delay := retryDelay(int(sel.Status.ConsecutiveFailures), r.Options.Backoff, refreshInterval(sel), retryAfter(err), r.Options.Jitter)
	next := ceilSecond(now.Add(delay))
	sel.Status.NextSyncTime = &metav1.Time{Time: next}
	return ctrl.Result{RequeueAfter: next.Sub(now)}, nil
}

func (r *KmsKeySelectorReconciler) forget(key types.NamespacedName) {
	r.memory.forget(key)
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

// SetupWithManager watches selectors (spec and annotation changes), the labelled ConfigMaps they
// write, so that an edited or deleted ConfigMap is repaired at once, and the providers and
// namespaces that decide whether a selector may list, so that a change takes effect at once.
// SetupIndexes must have run.
func (r *KmsKeySelectorReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.Options = r.Options.withDefaults()
	return ctrl.NewControllerManagedBy(mgr).
		For(&kmsv1alpha1.KmsKeySelector{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{},
			predicate.AnnotationChangedPredicate{},
		))).
		WatchesMetadata(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(selectorForConfigMap)).
		Watches(&kmsv1alpha1.KmsProvider{}, handler.EnqueueRequestsFromMapFunc(r.selectorsOfKmsProvider),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&kmsv1alpha1.ClusterKmsProvider{}, handler.EnqueueRequestsFromMapFunc(r.selectorsOfClusterKmsProvider),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WatchesMetadata(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.selectorsOfNamespace),
			builder.WithPredicates(predicate.LabelChangedPredicate{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Options.MaxConcurrentReconciles}).
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
