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
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/keysource"
)

// KeyCounter counts keys with one call; providers are validated with it.
type KeyCounter interface {
	CountKeys(ctx context.Context, req keysource.Request) (int, error)
}

var _ KeyCounter = (*keysource.Direct)(nil)

// ProviderReconciler validates KmsProviders and ClusterKmsProviders: it checks that KMS accepts
// their credentials, with one count call when the provider changes or is force-synced, and then
// once an interval while selectors use it, unless one of them listed through it successfully
// within that interval. It also counts the selectors that use each provider.
type ProviderReconciler struct {
	client.Client
	APIReader client.Reader
	Recorder  events.EventRecorder
	Keys      KeyCounter
	// Identities hands out the credentials of keyless providers.
	Identities Identities
	Options    Options
}

// +kubebuilder:rbac:groups=kms.keysync.dev,resources=kmsproviders;clusterkmsproviders,verbs=get;list;watch
// +kubebuilder:rbac:groups=kms.keysync.dev,resources=kmsproviders/status;clusterkmsproviders/status,verbs=get;update;patch

// providerUnderValidation is one provider of either kind, as the reconciler sees it.
type providerUnderValidation struct {
	obj    client.Object
	status *kmsv1alpha1.KmsProviderStatus
	// resolve gives the provider's location and Secret.
	resolve func() (provider, error)
	kind    string
}

// SetupWithManager runs a controller for each kind. Selectors are watched, so that the count of
// selectors stays true. SetupIndexes must have run.
func (r *ProviderReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.Options = r.Options.withDefaults()
	selectorChanged := builder.WithPredicates(predicate.GenerationChangedPredicate{})
	err := ctrl.NewControllerManagedBy(mgr).
		For(&kmsv1alpha1.KmsProvider{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Watches(&kmsv1alpha1.KmsKeySelector{}, providersOfSelector(kmsv1alpha1.KindKmsProvider), selectorChanged).
		Named("kmsprovider").
		Complete(reconcile.Func(r.reconcileKmsProvider))
	if err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&kmsv1alpha1.ClusterKmsProvider{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Watches(&kmsv1alpha1.KmsKeySelector{}, providersOfSelector(kmsv1alpha1.KindClusterKmsProvider), selectorChanged).
		Named("clusterkmsprovider").
		Complete(reconcile.Func(r.reconcileClusterKmsProvider))
}

// providersOfSelector enqueues the provider of kind that a selector refers to, and, when an
// update moved the selector to another provider, the one it left, so that both counts stay true.
func providersOfSelector(kind string) handler.EventHandler {
	enqueue := func(q workqueue.TypedRateLimitingInterface[reconcile.Request], objs ...client.Object) {
		for _, obj := range objs {
			sel, ok := obj.(*kmsv1alpha1.KmsKeySelector)
			if !ok || sel.Spec.ProviderRef == nil || sel.Spec.ProviderRef.Kind != kind {
				continue
			}
			key := types.NamespacedName{Name: sel.Spec.ProviderRef.Name}
			if kind == kmsv1alpha1.KindKmsProvider {
				key.Namespace = sel.Namespace
			}
			q.Add(reconcile.Request{NamespacedName: key})
		}
	}
	return handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(q, e.Object)
		},
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(q, e.ObjectOld, e.ObjectNew)
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(q, e.Object)
		},
	}
}

func (r *ProviderReconciler) reconcileKmsProvider(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	p := &kmsv1alpha1.KmsProvider{}
	if err := r.Get(ctx, req.NamespacedName, p); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	return r.reconcile(ctx, providerUnderValidation{
		obj: p, status: &p.Status, kind: kmsv1alpha1.KindKmsProvider,
		resolve: func() (provider, error) { return namespacedProvider(p, r.Options.AllowedIAMHosts) },
	})
}

func (r *ProviderReconciler) reconcileClusterKmsProvider(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	p := &kmsv1alpha1.ClusterKmsProvider{}
	if err := r.Get(ctx, req.NamespacedName, p); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	return r.reconcile(ctx, providerUnderValidation{
		obj: p, status: &p.Status, kind: kmsv1alpha1.KindClusterKmsProvider,
		resolve: func() (provider, error) { return clusterProviderOf(p, r.Options.ClusterResourceNamespace) },
	})
}

// reconcile counts the provider's selectors and validates it when due, then writes its status
// when it changed.
func (r *ProviderReconciler) reconcile(ctx context.Context, p providerUnderValidation) (result ctrl.Result, err error) {
	if !p.obj.GetDeletionTimestamp().IsZero() {
		return ctrl.Result{}, nil
	}
	before := p.status.DeepCopy()
	defer func() {
		if equality.Semantic.DeepEqual(before, p.status) {
			return
		}
		if patchErr := r.patchStatus(ctx, p, before); patchErr != nil && ctx.Err() == nil {
			err = errors.Join(err, patchErr)
		}
	}()

	users, err := selectorsOf(ctx, r, p.obj.GetNamespace(), p.kind, p.obj.GetName())
	if err != nil {
		return ctrl.Result{}, err
	}
	p.status.Selectors = int32(len(users))
	now := r.Options.Now()
	interval := validationInterval(users)
	requested := p.obj.GetGeneration() != p.status.ObservedGeneration ||
		p.obj.GetAnnotations()[kmsv1alpha1.ForceSyncAnnotation] != p.status.LastHandledForceSync
	if !requested {
		if len(users) == 0 {
			return ctrl.Result{}, nil
		}
		if last := p.status.LastValidationTime; last != nil && now.Before(last.Add(interval)) {
			return ctrl.Result{RequeueAfter: last.Add(interval).Sub(now)}, nil
		}
		if at, n := recentSuccesses(users, now.Add(-interval)); n > 0 {
			// The selectors' own listings show that KMS accepts the credentials: no call.
			r.validated(p, at, fmt.Sprintf("KMS accepted its credentials for %d selector(s) within %s", n, interval))
			return ctrl.Result{RequeueAfter: interval}, nil
		}
	}
	if err := r.validate(ctx, p, now); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: interval}, nil
}

// validate makes one count call with the provider's credentials and records the outcome.
func (r *ProviderReconciler) validate(ctx context.Context, p providerUnderValidation, now time.Time) error {
	err := r.count(ctx, p)
	if err == nil {
		r.validated(p, now, "KMS accepted the credentials")
		return nil
	}
	f := asFailure(err)
	if f == nil {
		return err
	}
	log.FromContext(ctx).Info("Provider validation failed", "reason", f.reason, "error", err.Error())
	r.setReady(p, metav1.ConditionFalse, f.reason, err.Error())
	r.Recorder.Eventf(p.obj, nil, corev1.EventTypeWarning, f.reason, "Validate", "%s", err.Error())
	return nil
}

func (r *ProviderReconciler) count(ctx context.Context, p providerUnderValidation) error {
	resolved, err := p.resolve()
	if err != nil {
		return err
	}
	endpoint, err := endpointOf(resolved, r.Options.AllowInsecureEndpoints)
	if err != nil {
		return err
	}
	creds, err := credentialsOf(ctx, r.APIReader, r.Identities, resolved, r.Options.AllowInsecureEndpoints)
	if err != nil {
		return err
	}
	countCtx, cancel := context.WithTimeout(ctx, r.Options.SyncTimeout)
	defer cancel()
	_, err = r.Keys.CountKeys(countCtx, keysource.Request{Endpoint: endpoint, ProjectID: resolved.location.ProjectID, Credentials: creds})
	if err != nil {
		return kmsFailure(err)
	}
	return nil
}

func (r *ProviderReconciler) validated(p providerUnderValidation, at time.Time, message string) {
	p.status.LastValidationTime = &metav1.Time{Time: at.Truncate(time.Second)}
	r.setReady(p, metav1.ConditionTrue, kmsv1alpha1.ReasonValidated, message)
}

func (r *ProviderReconciler) setReady(p providerUnderValidation, status metav1.ConditionStatus, reason, message string) {
	p.status.ObservedGeneration = p.obj.GetGeneration()
	p.status.LastHandledForceSync = p.obj.GetAnnotations()[kmsv1alpha1.ForceSyncAnnotation]
	meta.SetStatusCondition(&p.status.Conditions, metav1.Condition{
		Type: kmsv1alpha1.ConditionReady, Status: status, Reason: reason, Message: message,
		ObservedGeneration: p.obj.GetGeneration(),
	})
}

func (r *ProviderReconciler) patchStatus(ctx context.Context, p providerUnderValidation, before *kmsv1alpha1.KmsProviderStatus) error {
	base := p.obj.DeepCopyObject().(client.Object)
	switch b := base.(type) {
	case *kmsv1alpha1.KmsProvider:
		b.Status = *before
	case *kmsv1alpha1.ClusterKmsProvider:
		b.Status = *before
	}
	if err := r.Status().Patch(ctx, p.obj, client.MergeFrom(base)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("patching status: %w", err)
	}
	return nil
}

// validationInterval is the shortest refresh interval of the provider's selectors, so that the
// provider's health costs no more calls than its busiest selector makes.
func validationInterval(users []kmsv1alpha1.KmsKeySelector) time.Duration {
	if len(users) == 0 {
		return DefaultRefreshInterval
	}
	interval := refreshInterval(&users[0])
	for i := range users[1:] {
		interval = min(interval, refreshInterval(&users[i+1]))
	}
	return interval
}

// recentSuccesses counts the selectors that synced since, and gives the latest of their syncs.
func recentSuccesses(users []kmsv1alpha1.KmsKeySelector, since time.Time) (latest time.Time, n int) {
	for _, s := range users {
		last := s.Status.LastSyncTime
		if last == nil || last.Time.Before(since) || !meta.IsStatusConditionTrue(s.Status.Conditions, kmsv1alpha1.ConditionReady) {
			continue
		}
		n++
		if last.After(latest) {
			latest = last.Time
		}
	}
	return latest, n
}
