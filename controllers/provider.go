package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/identity"
)

// provider is what a selector lists with: a KMS location, and how to authenticate to it. Its
// paths name, for messages, where in which object each setting comes from.
type provider struct {
	location kmsv1alpha1.KMSLocation
	// specPath is the path of the settings: "spec.provider" for an inline provider, or
	// `ClusterKmsProvider "shared" spec`.
	specPath string
	// authPath is the path of the authentication method in use, such as
	// "spec.provider.credentialsSecretRef".
	authPath string
	// Exactly one method is set: a Secret, a workload identity, or the node's or the operator's
	// own identity (keyless).
	secret   *types.NamespacedName
	workload *workloadIdentity
	keyless  identity.Source
}

// digest identifies the settings a listing through the provider depends on, never a secret.
func (p provider) digest() string {
	var source string
	if p.keyless != nil {
		source = p.keyless.Key()
	}
	var workload any
	if w := p.workload; w != nil {
		workload = []any{w.serviceAccount.String(), w.audiences, w.identityProviderID, w.iamEndpoint}
	}
	var secret string
	if p.secret != nil {
		secret = p.secret.String()
	}
	canonical, _ := json.Marshal([]any{p.location, p.authPath, secret, workload, source})
	sum := sha256.Sum256(canonical)
	return hex.EncodeToString(sum[:8])
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
		out := provider{location: p.KMSLocation, specPath: "spec.provider"}
		switch {
		case p.WorkloadIdentity != nil:
			out.authPath = "spec.provider.workloadIdentity"
			out.workload = workloadOf(*p.WorkloadIdentity, sel.Namespace)
			out.workload.allowedHosts = r.Options.AllowedIAMHosts
		case p.CredentialsSecretRef != nil:
			out.authPath = "spec.provider.credentialsSecretRef"
			out.secret = &types.NamespacedName{Namespace: sel.Namespace, Name: p.CredentialsSecretRef.Name}
		default:
			return provider{}, newFailuref(kmsv1alpha1.ReasonInvalidSpec, "set one of spec.provider.workloadIdentity and spec.provider.credentialsSecretRef")
		}
		return out, nil
	}
	ref := sel.Spec.ProviderRef
	if ref == nil {
		return provider{}, newFailuref(kmsv1alpha1.ReasonInvalidSpec, "set one of spec.provider and spec.providerRef")
	}
	var p kmsv1alpha1.GenericProvider
	key := types.NamespacedName{Name: ref.Name}
	switch ref.Kind {
	case kmsv1alpha1.KindKmsProvider:
		p, key.Namespace = &kmsv1alpha1.KmsProvider{}, sel.Namespace
	case kmsv1alpha1.KindClusterKmsProvider:
		p = &kmsv1alpha1.ClusterKmsProvider{}
	default:
		return provider{}, newFailuref(kmsv1alpha1.ReasonInvalidSpec, "spec.providerRef.kind %q is neither %s nor %s", ref.Kind, kmsv1alpha1.KindKmsProvider, kmsv1alpha1.KindClusterKmsProvider)
	}
	if err := r.Get(ctx, key, p); err != nil {
		if apierrors.IsNotFound(err) {
			where := ""
			if key.Namespace != "" {
				where = fmt.Sprintf(" in namespace %q", key.Namespace)
			}
			return provider{}, newFailuref(kmsv1alpha1.ReasonProviderNotFound, "%s %q named by spec.providerRef does not exist%s", ref.Kind, ref.Name, where)
		}
		return provider{}, fmt.Errorf("getting provider: %w", err)
	}
	if err := namespaceMayUse(ctx, r, p, sel.Namespace); err != nil {
		return provider{}, err
	}
	return resolve(p, r.Options)
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

// resolve gives the location and the authentication of a provider of either kind, as o
// configures them. The namespace of the Secret or service account that a ClusterKmsProvider
// names defaults to the cluster resource namespace. A namespaced provider, which a namespace
// user writes, sends service account tokens to the allowed IAM hosts only.
func resolve(p kmsv1alpha1.GenericProvider, o Options) (provider, error) {
	clusterResourceNamespace := o.ClusterResourceNamespace
	out := provider{location: p.Location(), specPath: fmt.Sprintf("%s %q spec", p.ProviderKind(), p.GetName())}
	auth := p.Auth()
	// namespace defaults the namespace set at field to the cluster resource namespace.
	namespace := func(field, ns string) (string, error) {
		switch {
		case ns != "":
			return ns, nil
		case clusterResourceNamespace != "":
			return clusterResourceNamespace, nil
		}
		return "", newFailuref(kmsv1alpha1.ReasonInvalidSpec,
			"%s.namespace is not set and the operator runs without --cluster-resource-namespace", field)
	}
	switch {
	case auth.WorkloadIdentity != nil:
		w := auth.WorkloadIdentity
		out.authPath = out.specPath + ".auth.workloadIdentity"
		ns, err := namespace(out.authPath+".serviceAccountRef", w.ServiceAccountRef.Namespace)
		if err != nil {
			return provider{}, err
		}
		out.workload = workloadOf(kmsv1alpha1.WorkloadIdentity{
			ServiceAccountRef: w.ServiceAccountRef.ServiceAccountReference, IdentityFederation: w.IdentityFederation,
		}, ns)
		if p.GetNamespace() != "" {
			out.workload.allowedHosts = o.AllowedIAMHosts
		}
	case auth.NodeAgency != nil:
		out.authPath = out.specPath + ".auth.nodeAgency"
		out.keyless = identity.NodeAgency{}
	case auth.PodIdentity != nil:
		out.authPath = out.specPath + ".auth.podIdentity"
		out.keyless = identity.PodIdentity{}
	case auth.SecretRef != nil:
		out.authPath = out.specPath + ".auth.secretRef"
		ns, err := namespace(out.authPath, auth.SecretRef.Namespace)
		if err != nil {
			return provider{}, err
		}
		out.secret = &types.NamespacedName{Namespace: ns, Name: auth.SecretRef.Name}
	default:
		return provider{}, newFailuref(kmsv1alpha1.ReasonInvalidSpec, "%s.auth sets no authentication method", out.specPath)
	}
	return out, nil
}

// namespaceMayUse returns nil when the provider allows the namespace, a ProviderNotAllowed
// failure that names the rule when it does not (or the namespace is gone), and any other error
// when the namespace could not be read.
func namespaceMayUse(ctx context.Context, c client.Reader, p kmsv1alpha1.GenericProvider, namespace string) error {
	ns := &metav1.PartialObjectMetadata{}
	ns.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Namespace"))
	if err := c.Get(ctx, types.NamespacedName{Name: namespace}, ns); err != nil {
		if apierrors.IsNotFound(err) {
			return newFailuref(kmsv1alpha1.ReasonProviderNotAllowed, "namespace %q does not exist", namespace)
		}
		return fmt.Errorf("getting namespace %q: %w", namespace, err)
	}
	if err := p.Allows(ns.Name, ns.Labels); err != nil {
		return newFailure(kmsv1alpha1.ReasonProviderNotAllowed, err)
	}
	return nil
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
