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
	// Refreshes tells which selectors listed recently, so that their success validates the
	// provider; nil means none is known beyond the selectors' statuses.
	Refreshes *Refreshes
	Options   Options
}

// +kubebuilder:rbac:groups=kms.keysync.dev,resources=kmsproviders;clusterkmsproviders,verbs=get;list;watch
// +kubebuilder:rbac:groups=kms.keysync.dev,resources=kmsproviders/status;clusterkmsproviders/status,verbs=get;update;patch

// SetupWithManager runs a controller for each kind. Selectors, and the labels of namespaces, are
// watched, so that the count of selectors stays true. SetupIndexes must have run.
func (r *ProviderReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.Options = r.Options.withDefaults()
	if r.Refreshes == nil {
		r.Refreshes = &Refreshes{}
	}
	r.Recorder = boundRecorder(r.Recorder)
	selectorChanged := builder.WithPredicates(predicate.GenerationChangedPredicate{})
	err := ctrl.NewControllerManagedBy(mgr).
		For(&kmsv1alpha1.KmsProvider{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Watches(&kmsv1alpha1.KmsKeySelector{}, providersOfSelector(kmsv1alpha1.KindKmsProvider), selectorChanged).
		Named("kmsprovider").
		Complete(r.reconcilerOf(func() kmsv1alpha1.GenericProvider { return &kmsv1alpha1.KmsProvider{} }))
	if err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&kmsv1alpha1.ClusterKmsProvider{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Watches(&kmsv1alpha1.KmsKeySelector{}, providersOfSelector(kmsv1alpha1.KindClusterKmsProvider), selectorChanged).
		WatchesMetadata(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.clusterProvidersWithConditions),
			builder.WithPredicates(predicate.LabelChangedPredicate{})).
		Named("clusterkmsprovider").
		Complete(r.reconcilerOf(func() kmsv1alpha1.GenericProvider { return &kmsv1alpha1.ClusterKmsProvider{} }))
}

// clusterProvidersWithConditions enqueues the ClusterKmsProviders whose conditions may select a
// namespace by its labels, so that their count of selectors follows a label change.
func (r *ProviderReconciler) clusterProvidersWithConditions(ctx context.Context, _ client.Object) []reconcile.Request {
	list := &kmsv1alpha1.ClusterKmsProviderList{}
	if err := r.List(ctx, list); err != nil {
		log.FromContext(ctx).Error(err, "Cannot map a namespace to the cluster providers")
		return nil
	}
	var out []reconcile.Request
	for _, p := range list.Items {
		if len(p.Spec.Conditions) > 0 {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: p.Name}})
		}
	}
	return out
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

// reconcilerOf reconciles the providers of the kind that newProvider makes.
func (r *ProviderReconciler) reconcilerOf(newProvider func() kmsv1alpha1.GenericProvider) reconcile.Func {
	return func(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
		p := newProvider()
		if err := r.Get(ctx, req.NamespacedName, p); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
		return r.reconcile(ctx, p)
	}
}

// reconcile counts the provider's selectors and validates it when due, then writes its status
// when it changed.
func (r *ProviderReconciler) reconcile(ctx context.Context, p kmsv1alpha1.GenericProvider) (result ctrl.Result, err error) {
	if !p.GetDeletionTimestamp().IsZero() {
		return ctrl.Result{}, nil
	}
	status := p.ProviderStatus()
	before := status.DeepCopy()
	// write patches what changed since the status was read or last written.
	write := func() error {
		if equality.Semantic.DeepEqual(before, status) {
			return nil
		}
		if err := r.patchStatus(ctx, p, before); err != nil {
			return err
		}
		before = status.DeepCopy()
		return nil
	}
	defer func() {
		if writeErr := write(); writeErr != nil && ctx.Err() == nil {
			err = errors.Join(err, writeErr)
		}
	}()

	users, err := r.allowedSelectorsOf(ctx, p)
	if err != nil {
		return ctrl.Result{}, err
	}
	status.Selectors = int32(len(users))
	now := r.Options.Now()
	interval := validationInterval(users)
	requested := p.GetGeneration() != status.ObservedGeneration ||
		p.GetAnnotations()[kmsv1alpha1.ForceSyncAnnotation] != status.LastHandledForceSync
	if !requested {
		if len(users) == 0 {
			return ctrl.Result{}, nil
		}
		if last := status.LastValidationTime; last != nil && now.Before(last.Add(interval)) {
			return ctrl.Result{RequeueAfter: last.Add(interval).Sub(now)}, nil
		}
		if at, n := recentSuccesses(users, now.Add(-interval), r.Refreshes.LastListed); n > 0 {
			// The selectors' own listings show that KMS accepts the credentials: no call.
			r.validated(p, at, fmt.Sprintf("KMS accepted its credentials for %d selector(s) within %s", n, interval))
			return ctrl.Result{RequeueAfter: interval}, nil
		}
	}
	if requested && setReconciling(&status.Conditions, p.GetGeneration(), "Checking that KMS accepts the credentials") {
		// Written before the call, so that a GitOps tool sees the change is being answered.
		// Only a hint: a refused write does not hold the validation up.
		if err := write(); err != nil {
			log.FromContext(ctx).V(1).Info("Cannot record that the change is being answered", "error", err.Error())
		}
	}
	if err := r.validate(ctx, p, now); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: interval}, nil
}

// allowedSelectorsOf lists the selectors that refer to the provider from a namespace that may
// use it. A selector of any other namespace never lists through the provider, so it is not
// counted, and neither its refresh interval nor its success drives the provider's validation.
func (r *ProviderReconciler) allowedSelectorsOf(ctx context.Context, p kmsv1alpha1.GenericProvider) ([]kmsv1alpha1.KmsKeySelector, error) {
	users, err := selectorsOf(ctx, r, p.GetNamespace(), p.ProviderKind(), p.GetName())
	if err != nil {
		return nil, err
	}
	allowed := map[string]bool{}
	kept := users[:0]
	for _, s := range users {
		ok, seen := allowed[s.Namespace]
		if !seen {
			err := namespaceMayUse(ctx, r, p, s.Namespace)
			if err != nil && asFailure(err) == nil {
				return nil, err
			}
			ok = err == nil
			allowed[s.Namespace] = ok
		}
		if ok {
			kept = append(kept, s)
		}
	}
	return kept, nil
}

// validate makes one count call with the provider's credentials and records the outcome.
func (r *ProviderReconciler) validate(ctx context.Context, p kmsv1alpha1.GenericProvider, now time.Time) error {
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
	r.Recorder.Eventf(p, nil, corev1.EventTypeWarning, f.reason, "Validate", "%s", err.Error())
	return nil
}

func (r *ProviderReconciler) count(ctx context.Context, p kmsv1alpha1.GenericProvider) error {
	resolved, err := resolve(p, r.Options)
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

func (r *ProviderReconciler) validated(p kmsv1alpha1.GenericProvider, at time.Time, message string) {
	p.ProviderStatus().LastValidationTime = &metav1.Time{Time: at.Truncate(time.Second)}
	r.setReady(p, metav1.ConditionTrue, kmsv1alpha1.ReasonValidated, message)
}

func (r *ProviderReconciler) setReady(p kmsv1alpha1.GenericProvider, status metav1.ConditionStatus, reason, message string) {
	st := p.ProviderStatus()
	st.ObservedGeneration = p.GetGeneration()
	st.LastHandledForceSync = p.GetAnnotations()[kmsv1alpha1.ForceSyncAnnotation]
	setOutcome(&st.Conditions, p.GetGeneration(), status, reason, message)
}

func (r *ProviderReconciler) patchStatus(ctx context.Context, p kmsv1alpha1.GenericProvider, before *kmsv1alpha1.KmsProviderStatus) error {
	base := p.Copy()
	*base.ProviderStatus() = *before
	if err := r.Status().Patch(ctx, p, client.MergeFrom(base)); err != nil && !apierrors.IsNotFound(err) {
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

// recentSuccesses counts the selectors that synced since, and gives the latest of their syncs:
// the later of the last change their status records and the last listing lastListed knows of,
// as an unchanged listing is not written.
func recentSuccesses(users []kmsv1alpha1.KmsKeySelector, since time.Time, lastListed func(*kmsv1alpha1.KmsKeySelector) time.Time) (latest time.Time, n int) {
	for i := range users {
		s := &users[i]
		if s.Status.LastSyncTime == nil || !meta.IsStatusConditionTrue(s.Status.Conditions, kmsv1alpha1.ConditionReady) {
			continue
		}
		last := s.Status.LastSyncTime.Time
		if listed := lastListed(s); listed.After(last) {
			last = listed
		}
		if last.Before(since) {
			continue
		}
		n++
		if last.After(latest) {
			latest = last
		}
	}
	return latest, n
}
