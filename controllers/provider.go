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
)

// provider is what a selector lists with: a KMS location, and the Secret that holds the
// credentials. Its fields name, for messages, where each setting comes from.
type provider struct {
	location kmsv1alpha1.KMSLocation
	secret   types.NamespacedName
	// fields is the path of the settings: "spec.provider" for an inline provider, or
	// `ClusterKmsProvider "shared" spec`.
	fields string
	// secretField is the path of the field that names the Secret.
	secretField string
}

// resolveProvider finds the provider a selector lists with, and checks that the selector's
// namespace may use it.
func (r *KmsKeySelectorReconciler) resolveProvider(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector) (provider, error) {
	if p := sel.Spec.Provider; p != nil {
		return provider{
			location:    p.KMSLocation,
			secret:      types.NamespacedName{Namespace: sel.Namespace, Name: p.CredentialsSecretRef.Name},
			fields:      "spec.provider",
			secretField: "spec.provider.credentialsSecretRef",
		}, nil
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
		return namespacedProvider(p), nil
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

func namespacedProvider(p *kmsv1alpha1.KmsProvider) provider {
	var secret string
	if p.Spec.Auth.SecretRef != nil {
		secret = p.Spec.Auth.SecretRef.Name
	}
	return provider{
		location:    p.Spec.KMSLocation,
		secret:      types.NamespacedName{Namespace: p.Namespace, Name: secret},
		fields:      fmt.Sprintf("KmsProvider %q spec", p.Name),
		secretField: fmt.Sprintf("KmsProvider %q spec.auth.secretRef", p.Name),
	}
}

// clusterProvider resolves a ClusterKmsProvider; its Secret's namespace defaults to the
// operator's cluster resource namespace.
func (r *KmsKeySelectorReconciler) clusterProvider(p *kmsv1alpha1.ClusterKmsProvider) (provider, error) {
	return clusterProviderOf(p, r.Options.ClusterResourceNamespace)
}

func clusterProviderOf(p *kmsv1alpha1.ClusterKmsProvider, clusterResourceNamespace string) (provider, error) {
	out := provider{
		location:    p.Spec.KMSLocation,
		fields:      fmt.Sprintf("ClusterKmsProvider %q spec", p.Name),
		secretField: fmt.Sprintf("ClusterKmsProvider %q spec.auth.secretRef", p.Name),
	}
	ref := p.Spec.Auth.SecretRef
	if ref == nil {
		return provider{}, failedf(kmsv1alpha1.ReasonInvalidSpec, "%s is not set", out.secretField)
	}
	out.secret = types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}
	if out.secret.Namespace == "" {
		out.secret.Namespace = clusterResourceNamespace
	}
	if out.secret.Namespace == "" {
		return provider{}, failedf(kmsv1alpha1.ReasonInvalidSpec,
			"%s.namespace is not set and the operator runs without --cluster-resource-namespace", out.secretField)
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
