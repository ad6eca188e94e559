package v1alpha1

import (
	"fmt"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
)

// GenericProvider is what KmsProvider and ClusterKmsProvider have in common, so that the
// operator reconciles and resolves both through one path. What differs between the kinds is
// their scope: where the objects their auth names live, and which namespaces may use them.
// +kubebuilder:object:generate=false
type GenericProvider interface {
	runtime.Object
	metav1.Object

	// ProviderKind is KindKmsProvider or KindClusterKmsProvider.
	ProviderKind() string
	// Location is where the KMS API of the provider's project is.
	Location() KMSLocation
	// Auth is the provider's authentication in the cluster kind's shape: on a KmsProvider, the
	// Secret or service account it names is in its own namespace; on a ClusterKmsProvider, an
	// empty namespace stands for the operator's cluster resource namespace.
	Auth() ClusterKmsProviderAuth
	// Allows returns nil when the selectors of a namespace with these labels may use the
	// provider, or else an error that names the rule refusing them.
	Allows(namespace string, namespaceLabels map[string]string) error
	// ProviderStatus is the provider's status, to read and to write.
	ProviderStatus() *KmsProviderStatus
	// Copy returns a deep copy.
	Copy() GenericProvider
}

var (
	_ GenericProvider = (*KmsProvider)(nil)
	_ GenericProvider = (*ClusterKmsProvider)(nil)
)

func (p *KmsProvider) ProviderKind() string               { return KindKmsProvider }
func (p *KmsProvider) Location() KMSLocation              { return p.Spec.KMSLocation }
func (p *KmsProvider) ProviderStatus() *KmsProviderStatus { return &p.Status }
func (p *KmsProvider) Copy() GenericProvider              { return p.DeepCopy() }

// Allows lets the provider's own namespace alone use it.
func (p *KmsProvider) Allows(namespace string, _ map[string]string) error {
	if namespace != p.Namespace {
		return fmt.Errorf("KmsProvider %q serves only the selectors of namespace %q", p.Name, p.Namespace)
	}
	return nil
}

func (p *KmsProvider) Auth() ClusterKmsProviderAuth {
	var out ClusterKmsProviderAuth
	if w := p.Spec.Auth.WorkloadIdentity; w != nil {
		out.WorkloadIdentity = &ClusterWorkloadIdentity{
			ServiceAccountRef:  ClusterServiceAccountReference{ServiceAccountReference: w.ServiceAccountRef, Namespace: p.Namespace},
			IdentityFederation: w.IdentityFederation,
		}
	}
	if s := p.Spec.Auth.SecretRef; s != nil {
		out.SecretRef = &ClusterSecretReference{Name: s.Name, Namespace: p.Namespace}
	}
	return out
}

func (p *ClusterKmsProvider) ProviderKind() string               { return KindClusterKmsProvider }
func (p *ClusterKmsProvider) Location() KMSLocation              { return p.Spec.KMSLocation }
func (p *ClusterKmsProvider) Auth() ClusterKmsProviderAuth       { return p.Spec.Auth }
func (p *ClusterKmsProvider) ProviderStatus() *KmsProviderStatus { return &p.Status }
func (p *ClusterKmsProvider) Copy() GenericProvider              { return p.DeepCopy() }

// Allows lets a namespace use the provider when any of its conditions names or selects it, and
// every namespace when it has no conditions.
func (p *ClusterKmsProvider) Allows(namespace string, namespaceLabels map[string]string) error {
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
