package controllers

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/identity"
)

// provider is what a selector lists with: a KMS location, and how to authenticate to it. Its
// fields name, for messages, where each setting comes from.
type provider struct {
	location kmsv1alpha1.KMSLocation
	// fields is the path of the settings: "spec.provider" for an inline provider, or
	// `ClusterKmsProvider "shared" spec`.
	fields string
	// authField is the path of the authentication method in use, such as
	// "spec.provider.credentialsSecretRef".
	authField string
	// Exactly one method is set: a Secret, a workload identity, or the node's or the operator's
	// own identity (keyless).
	secret   *types.NamespacedName
	workload *workloadIdentity
	keyless  identity.Source
}

// workloadIdentity is a WorkloadIdentity whose service account's namespace is resolved.
type workloadIdentity struct {
	serviceAccount     types.NamespacedName
	audiences          []string
	identityProviderID string
	iamEndpoint        string
	// allowedHosts, set for an inline provider and a KmsProvider, whose IAM endpoint a namespace
	// user chooses, are the host patterns that endpoint must match; nil allows any.
	allowedHosts []string
}

// resolveProvider finds the provider a selector lists with, and checks that the selector's
// namespace may use it.
func (r *KmsKeySelectorReconciler) resolveProvider(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector) (provider, error) {
	if p := sel.Spec.Provider; p != nil {
		out := provider{location: p.KMSLocation, fields: "spec.provider"}
		switch {
		case p.WorkloadIdentity != nil:
			out.authField = "spec.provider.workloadIdentity"
			out.workload = workloadOf(*p.WorkloadIdentity, sel.Namespace)
			out.workload.allowedHosts = r.Options.AllowedIAMHosts
		case p.CredentialsSecretRef != nil:
			out.authField = "spec.provider.credentialsSecretRef"
			out.secret = &types.NamespacedName{Namespace: sel.Namespace, Name: p.CredentialsSecretRef.Name}
		default:
			return provider{}, failedf(kmsv1alpha1.ReasonInvalidSpec, "set one of spec.provider.workloadIdentity and spec.provider.credentialsSecretRef")
		}
		return out, nil
	}
	ref := sel.Spec.ProviderRef
	if ref == nil {
		return provider{}, failedf(kmsv1alpha1.ReasonInvalidSpec, "set one of spec.provider and spec.providerRef")
	}
	switch ref.Kind {
	case kmsv1alpha1.KindKmsProvider:
		p := &kmsv1alpha1.KmsProvider{}
		if err := r.Get(ctx, types.NamespacedName{Namespace: sel.Namespace, Name: ref.Name}, p); err != nil {
			return provider{}, providerGetError(err, "KmsProvider %q named by spec.providerRef does not exist in namespace %q", ref.Name, sel.Namespace)
		}
		return namespacedProvider(p, r.Options.AllowedIAMHosts)
	case kmsv1alpha1.KindClusterKmsProvider:
		p := &kmsv1alpha1.ClusterKmsProvider{}
		if err := r.Get(ctx, types.NamespacedName{Name: ref.Name}, p); err != nil {
			return provider{}, providerGetError(err, "ClusterKmsProvider %q named by spec.providerRef does not exist", ref.Name)
		}
		ns := &metav1.PartialObjectMetadata{}
		ns.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Namespace"))
		if err := r.Get(ctx, types.NamespacedName{Name: sel.Namespace}, ns); err != nil {
			return provider{}, fmt.Errorf("getting namespace %q: %w", sel.Namespace, err)
		}
		if err := allowsNamespace(p, ns.Name, ns.Labels); err != nil {
			return provider{}, failed(kmsv1alpha1.ReasonProviderNotAllowed, err)
		}
		return r.clusterProvider(p)
	}
	return provider{}, failedf(kmsv1alpha1.ReasonInvalidSpec, "spec.providerRef.kind %q is neither %s nor %s", ref.Kind, kmsv1alpha1.KindKmsProvider, kmsv1alpha1.KindClusterKmsProvider)
}

func providerGetError(err error, notFound string, args ...any) error {
	if apierrors.IsNotFound(err) {
		return failedf(kmsv1alpha1.ReasonProviderNotFound, notFound, args...)
	}
	return fmt.Errorf("getting provider: %w", err)
}

// namespacedProvider resolves a KmsProvider; its workload identity may send tokens to the
// allowedHosts only.
func namespacedProvider(p *kmsv1alpha1.KmsProvider, allowedHosts []string) (provider, error) {
	out := provider{location: p.Spec.KMSLocation, fields: fmt.Sprintf("KmsProvider %q spec", p.Name)}
	auth := p.Spec.Auth
	switch {
	case auth.WorkloadIdentity != nil:
		out.authField = out.fields + ".auth.workloadIdentity"
		out.workload = workloadOf(*auth.WorkloadIdentity, p.Namespace)
		out.workload.allowedHosts = allowedHosts
	case auth.SecretRef != nil:
		out.authField = out.fields + ".auth.secretRef"
		out.secret = &types.NamespacedName{Namespace: p.Namespace, Name: auth.SecretRef.Name}
	default:
		return provider{}, failedf(kmsv1alpha1.ReasonInvalidSpec, "%s.auth sets no authentication method", out.fields)
	}
	return out, nil
}

// workloadOf resolves a namespaced WorkloadIdentity: its service account is in namespace.
func workloadOf(w kmsv1alpha1.WorkloadIdentity, namespace string) *workloadIdentity {
	return &workloadIdentity{
		serviceAccount:     types.NamespacedName{Namespace: namespace, Name: w.ServiceAccountRef.Name},
		audiences:          w.ServiceAccountRef.Audiences,
		identityProviderID: w.IdentityProviderID,
		iamEndpoint:        w.IAMEndpoint,
	}
}

// clusterProvider resolves a ClusterKmsProvider; the namespace of its Secret or service account
// defaults to the operator's cluster resource namespace.
func (r *KmsKeySelectorReconciler) clusterProvider(p *kmsv1alpha1.ClusterKmsProvider) (provider, error) {
	return clusterProviderOf(p, r.Options.ClusterResourceNamespace)
}

func clusterProviderOf(p *kmsv1alpha1.ClusterKmsProvider, clusterResourceNamespace string) (provider, error) {
	out := provider{location: p.Spec.KMSLocation, fields: fmt.Sprintf("ClusterKmsProvider %q spec", p.Name)}
	auth := p.Spec.Auth
	// namespace defaults the namespace set at field to the cluster resource namespace.
	namespace := func(field, ns string) (string, error) {
		switch {
		case ns != "":
			return ns, nil
		case clusterResourceNamespace != "":
			return clusterResourceNamespace, nil
		}
		return "", failedf(kmsv1alpha1.ReasonInvalidSpec,
			"%s.namespace is not set and the operator runs without --cluster-resource-namespace", field)
	}
	switch {
	case auth.WorkloadIdentity != nil:
		w := auth.WorkloadIdentity
		out.authField = out.fields + ".auth.workloadIdentity"
		ns, err := namespace(out.authField+".serviceAccountRef", w.ServiceAccountRef.Namespace)
		if err != nil {
			return provider{}, err
		}
		out.workload = workloadOf(kmsv1alpha1.WorkloadIdentity{
			ServiceAccountRef: w.ServiceAccountRef.ServiceAccountReference, IdentityFederation: w.IdentityFederation,
		}, ns)
	case auth.NodeAgency != nil:
		out.authField = out.fields + ".auth.nodeAgency"
		out.keyless = identity.NodeAgency{}
	case auth.PodIdentity != nil:
		out.authField = out.fields + ".auth.podIdentity"
		out.keyless = identity.PodIdentity{}
	case auth.SecretRef != nil:
		out.authField = out.fields + ".auth.secretRef"
		ns, err := namespace(out.authField, auth.SecretRef.Namespace)
		if err != nil {
			return provider{}, err
		}
		out.secret = &types.NamespacedName{Namespace: ns, Name: auth.SecretRef.Name}
	default:
		return provider{}, failedf(kmsv1alpha1.ReasonInvalidSpec, "%s.auth sets no authentication method", out.fields)
	}
	return out, nil
}

// allowsNamespace tells, as an error naming the rule, why a ClusterKmsProvider does not allow ns;
// nil when it does.
func allowsNamespace(p *kmsv1alpha1.ClusterKmsProvider, namespace string, namespaceLabels map[string]string) error {
	if len(p.Spec.Conditions) == 0 {
		return nil
	}
	for i, c := range p.Spec.Conditions {
		if slices.Contains(c.Namespaces, namespace) {
			return nil
		}
		if c.NamespaceSelector == nil {
			continue
		}
		selector, err := metav1.LabelSelectorAsSelector(c.NamespaceSelector)
		if err != nil {
			return fmt.Errorf("ClusterKmsProvider %q spec.conditions[%d].namespaceSelector is invalid: %w", p.Name, i, err)
		}
		if selector.Matches(labels.Set(namespaceLabels)) {
			return nil
		}
	}
	return fmt.Errorf("ClusterKmsProvider %q does not allow namespace %q: none of its %d spec.conditions selects it by label or names it",
		p.Name, namespace, len(p.Spec.Conditions))
}

// providerKey is the index value of a selector's spec.providerRef: the kind and the name.
func providerKey(kind, name string) string { return kind + "/" + name }

// providerRefIndex indexes selectors by the provider they refer to.
const providerRefIndex = "spec.providerRef"

// SetupIndexes registers the cache indexes that the reconcilers look selectors up by.
func SetupIndexes(ctx context.Context, mgr ctrl.Manager) error {
	return mgr.GetFieldIndexer().IndexField(ctx, &kmsv1alpha1.KmsKeySelector{}, providerRefIndex, func(obj client.Object) []string {
		sel, ok := obj.(*kmsv1alpha1.KmsKeySelector)
		if !ok || sel.Spec.ProviderRef == nil {
			return nil
		}
		return []string{providerKey(sel.Spec.ProviderRef.Kind, sel.Spec.ProviderRef.Name)}
	})
}

// selectorsOf lists the selectors that refer to a provider; namespace "" lists them all.
func selectorsOf(ctx context.Context, c client.Reader, namespace, kind, name string) ([]kmsv1alpha1.KmsKeySelector, error) {
	list := &kmsv1alpha1.KmsKeySelectorList{}
	if err := c.List(ctx, list, client.InNamespace(namespace), client.MatchingFields{providerRefIndex: providerKey(kind, name)}); err != nil {
		return nil, fmt.Errorf("listing the selectors of %s %q: %w", kind, name, err)
	}
	return list.Items, nil
}

func requestsFor(sels []kmsv1alpha1.KmsKeySelector) []reconcile.Request {
	out := make([]reconcile.Request, len(sels))
	for i, s := range sels {
		out[i] = reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&s)}
	}
	return out
}

// selectorsOfKmsProvider maps a KmsProvider to the selectors of its namespace that use it.
func (r *KmsKeySelectorReconciler) selectorsOfKmsProvider(ctx context.Context, obj client.Object) []reconcile.Request {
	sels, err := selectorsOf(ctx, r, obj.GetNamespace(), kmsv1alpha1.KindKmsProvider, obj.GetName())
	if err != nil {
		log.FromContext(ctx).Error(err, "Cannot map a provider to its selectors")
	}
	return requestsFor(sels)
}

// selectorsOfClusterKmsProvider maps a ClusterKmsProvider to the selectors that use it.
func (r *KmsKeySelectorReconciler) selectorsOfClusterKmsProvider(ctx context.Context, obj client.Object) []reconcile.Request {
	sels, err := selectorsOf(ctx, r, "", kmsv1alpha1.KindClusterKmsProvider, obj.GetName())
	if err != nil {
		log.FromContext(ctx).Error(err, "Cannot map a provider to its selectors")
	}
	return requestsFor(sels)
}

// selectorsOfNamespace maps a namespace to its selectors that use a ClusterKmsProvider, whose
// conditions may select the namespace by label.
func (r *KmsKeySelectorReconciler) selectorsOfNamespace(ctx context.Context, obj client.Object) []reconcile.Request {
	list := &kmsv1alpha1.KmsKeySelectorList{}
	if err := r.List(ctx, list, client.InNamespace(obj.GetName())); err != nil {
		log.FromContext(ctx).Error(err, "Cannot map a namespace to its selectors")
		return nil
	}
	var out []reconcile.Request
	for _, s := range list.Items {
		if s.Spec.ProviderRef != nil && s.Spec.ProviderRef.Kind == kmsv1alpha1.KindClusterKmsProvider {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&s)})
		}
	}
	return out
}
