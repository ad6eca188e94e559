package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
// decided by what the API server stores (the selector's status, the ConfigMap's content digest
// and the refresh checkpoint), so a restart or a new leader loses nothing and lists nothing early.
type KmsKeySelectorReconciler struct {
	client.Client
	// APIReader reads what the cache does not hold: Secrets, and ConfigMaps' data.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Keys      KeyLister
	// Identities hands out the credentials of keyless providers.
	Identities Identities
	// Refreshes schedules the refreshes of synced selectors; nil means one without a checkpoint.
	Refreshes *Refreshes
	Options   Options

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
	status := &statusWriter{r: r, before: sel.Status.DeepCopy()}
	defer func() {
		// A status that is not written is recomputed by the next attempt: the schedule and what
		// was handled are read from it, so the attempt is made again.
		if writeErr := status.write(ctx, sel); writeErr != nil && ctx.Err() == nil {
			err = errors.Join(err, writeErr)
		}
	}()
	return r.reconcileNormal(ctx, sel, status)
}

// statusWriter patches a selector's status with what changed since it was read or last written.
type statusWriter struct {
	r      *KmsKeySelectorReconciler
	before *kmsv1alpha1.KmsKeySelectorStatus
	// over are the resourceVersions of the selector that this reconcile's writes supersede.
	over []string
}

func (w *statusWriter) write(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector) error {
	if equality.Semantic.DeepEqual(w.before, &sel.Status) {
		return nil
	}
	w.over = append(w.over, sel.ResourceVersion)
	if err := w.r.patchStatus(ctx, sel, w.before); err != nil {
		return err
	}
	metrics.StatusWrites.Inc()
	w.r.memory.statusWritten(sel, w.over)
	w.before = sel.Status.DeepCopy()
	return nil
}

// reconcilingHintDelay is how long a first sync, a spec change or a force-sync may take before
// the status says it is being answered. Most are answered sooner, and then only their outcome is
// written: one status write instead of two.
const reconcilingHintDelay = time.Second

// reconcilingHint writes the Reconciling condition of a pending request if its answer takes
// longer than a delay, so that a GitOps tool sees a slow request is being answered.
type reconcilingHint struct {
	w       *statusWriter
	timer   *time.Timer
	written sync.WaitGroup
	// hinted is the selector as the hint writes it; set to nil when the write failed.
	hinted *kmsv1alpha1.KmsKeySelector
}

// reconcilingAfter starts the hint of sel's pending request, if it has one. It writes a copy,
// so that the sync may change sel meanwhile.
func (w *statusWriter) reconcilingAfter(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, delay time.Duration) *reconcilingHint {
	message, ok := pendingRequest(sel)
	if !ok {
		return nil
	}
	hinted := sel.DeepCopy()
	if !setReconciling(&hinted.Status.Conditions, sel.Generation, message) {
		return nil
	}
	h := &reconcilingHint{w: w, hinted: hinted}
	before := w.before.DeepCopy()
	h.written.Add(1)
	h.timer = time.AfterFunc(delay, func() {
		defer h.written.Done()
		// Only a hint: a refused write does not hold the sync up, and the outcome replaces it.
		if err := w.r.patchStatus(ctx, h.hinted, before); err != nil {
			log.FromContext(ctx).V(1).Info("Cannot record that the request is being answered", "error", err.Error())
			h.hinted = nil
		}
	})
	return h
}

// stop cancels the hint if it is not written yet, or else waits for it and makes it the status
// that the outcome of sel is written over.
func (h *reconcilingHint) stop(sel *kmsv1alpha1.KmsKeySelector) {
	if h == nil {
		return
	}
	if h.timer.Stop() {
		return
	}
	h.written.Wait()
	if h.hinted == nil {
		return
	}
	w := h.w
	w.over = append(w.over, sel.ResourceVersion)
	sel.ResourceVersion = h.hinted.ResourceVersion
	if _, pending := pendingRequest(sel); pending {
		// Kept until an outcome replaces it, as when the attempt is retried.
		if c := meta.FindStatusCondition(h.hinted.Status.Conditions, kmsv1alpha1.ConditionReconciling); c != nil {
			meta.SetStatusCondition(&sel.Status.Conditions, *c)
		}
	}
	metrics.StatusWrites.Inc()
	w.r.memory.statusWritten(h.hinted, w.over)
	w.before = h.hinted.Status.DeepCopy()
}

func (r *KmsKeySelectorReconciler) reconcileNormal(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, status *statusWriter) (ctrl.Result, error) {
	if sel.Spec.Suspend {
		setReady(sel, metav1.ConditionFalse, kmsv1alpha1.ReasonSuspended, "Syncing is suspended; the ConfigMap keeps its last content")
		sel.Status.NextSyncTime = nil
		sel.Status.LastHandledForceSync = sel.Annotations[kmsv1alpha1.ForceSyncAnnotation]
		metrics.SelectorReady.WithLabelValues(sel.Namespace, sel.Name).Set(0)
		metrics.SetSelectorReason(sel.Namespace, sel.Name, kmsv1alpha1.ReasonSuspended)
		return ctrl.Result{}, nil
	}
	now := r.Options.Now()
	// The provider is checked on every reconcile, so that a selector stops at once when its
	// namespace may no longer use it.
	p, err := r.resolveProvider(ctx, sel)
	if err != nil {
		return r.recordOutcome(ctx, sel, now, "", err)
	}
	target, err := r.currentTarget(ctx, sel)
	if err != nil {
		return r.recordOutcome(ctx, sel, now, p.digest(), err)
	}
	s, err := r.situation(ctx, sel, p, target, now)
	if err != nil {
		return ctrl.Result{}, err
	}
	d := decide(s)
	log.FromContext(ctx).V(1).Info("Decided", "action", d.action, "reason", d.reason)
	if d.action != actionList && slotScheduled(sel) {
		r.planned(sel, now.Add(d.wait))
	}
	switch d.action {
	case actionWait:
		return ctrl.Result{RequeueAfter: d.wait}, nil
	case actionRepair:
		log.FromContext(ctx).Info("Repairing the ConfigMap", "configMap", targetName(sel))
		if _, err := r.writeTarget(ctx, sel, target, *s.target.repairFrom); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{RequeueAfter: d.wait}, nil
	}
	hint := status.reconcilingAfter(ctx, sel, reconcilingHintDelay)
	err = r.sync(ctx, s, d.trigger, p, target)
	hint.stop(sel)
	return r.recordOutcome(ctx, sel, now, p.digest(), err)
}

// planned records the next refresh of a Synced selector that waits for it. After a restart this
// lets the checkpoint move past the selector, and gives the freshness metric its first value: no
// older than the slot before the next, which the last listing or the previous leader covered.
func (r *KmsKeySelectorReconciler) planned(sel *kmsv1alpha1.KmsKeySelector, due time.Time) {
	if r.Refreshes.LastListed(sel).IsZero() {
		covered := due.Add(-refreshInterval(sel))
		if last := sel.Status.LastSyncTime.Time; last.After(covered) {
			covered = last
		}
		metrics.SelectorLastSync.WithLabelValues(sel.Namespace, sel.Name).Set(float64(covered.Unix()))
		metrics.SelectorRefreshInterval.WithLabelValues(sel.Namespace, sel.Name).Set(refreshInterval(sel).Seconds())
	}
	r.Refreshes.Planned(sel, due)
}

// situation gathers what decide needs: what the ConfigMap holds, the selector's slot, its
// planned refresh and the checkpoint.
func (r *KmsKeySelectorReconciler) situation(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, p provider, target *metav1.PartialObjectMetadata, now time.Time) (situation, error) {
	state, err := r.inspectTarget(ctx, sel, target)
	if err != nil {
		return situation{}, err
	}
	through, err := r.Refreshes.ListedThrough(ctx)
	if err != nil {
		return situation{}, err
	}
	s := situation{sel: sel, providerDigest: p.digest(), target: state, due: r.Refreshes.Due(sel), listedThrough: through, now: now}
	// A spec the listing refuses has no slot; the listing reports why.
	if q, err := r.question(sel, p); err == nil {
		s.phase = q.Phase()
	}
	return s, nil
}

// recordOutcome turns the outcome of an attempt through the provider of providerDigest into the
// status and the next reconcile: a success waits for the next refresh, a failure the status
// reports is retried with backoff, and any other error goes back to the workqueue with the status
// unchanged.
func (r *KmsKeySelectorReconciler) recordOutcome(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, now time.Time, providerDigest string, err error) (ctrl.Result, error) {
	switch {
	case err == nil:
		sel.Status.ProviderDigest = providerDigest
		return ctrl.Result{RequeueAfter: r.Refreshes.Due(sel).Sub(now)}, nil
	case errors.Is(err, errSelectorGone), ctx.Err() != nil:
		// Deleted meanwhile, or the operator is stopping: the next operator syncs again.
		return ctrl.Result{}, nil
	}
	f := asFailure(err)
	if f == nil {
		return ctrl.Result{}, err
	}
	log.FromContext(ctx).Info("Sync failed", "reason", f.reason, "error", err.Error())
	// The status schedules what comes next.
	r.Refreshes.Planned(sel, time.Time{})
	sel.Status.ProviderDigest = providerDigest
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
	r.Refreshes.Forget(key)
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
	r.Recorder = boundRecorder(r.Recorder)
	if r.Refreshes == nil {
		r.Refreshes = &Refreshes{}
	}
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

// setReady records the outcome of an attempt in the conditions, and with it the generation the
// status speaks for.
func setReady(sel *kmsv1alpha1.KmsKeySelector, status metav1.ConditionStatus, reason, message string) {
	sel.Status.ObservedGeneration = sel.Generation
	setOutcome(&sel.Status.Conditions, sel.Generation, status, reason, message)
}
