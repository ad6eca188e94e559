package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// KMSLocation locates the KMS API of one project. The rules are those of the inline
// spec.provider of a KmsKeySelector.
type KMSLocation struct {
	// Region is the Huawei Cloud region, such as cn-north-4. It gives the endpoint
	// https://kms.<region>.myhuaweicloud.com unless Endpoint is set.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[a-z]{2,}(-[a-z0-9]+)+$`
	Region string `json:"region,omitempty"`

	// ProjectID is the ID of the project in that region.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9_-]+$`
	ProjectID string `json:"projectId"`

	// Endpoint overrides the endpoint derived from Region, for private or dedicated clouds and for
	// the emulator. Plain http:// is refused unless the operator runs with
	// --allow-insecure-endpoints.
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['https', 'http'] && url(self).getHostname() != ''",message="must be an absolute http or https URL"
	// +kubebuilder:validation:XValidation:rule="!self.contains('?') && !self.contains('#')",message="must not contain a query or fragment"
	Endpoint string `json:"endpoint,omitempty"`
}

// KmsProviderAuth says how the operator authenticates to KMS for a KmsProvider. Exactly one
// method is set. The node's and the operator's own cloud identities (nodeAgency, podIdentity) are
// offered only by ClusterKmsProvider, so that a namespace user can never borrow them.
// +kubebuilder:validation:XValidation:rule="[has(self.workloadIdentity), has(self.secretRef)].filter(m, m).size() == 1",message="set exactly one authentication method in spec.auth: workloadIdentity or secretRef"
type KmsProviderAuth struct {
	// WorkloadIdentity exchanges a token of a service account of the provider's namespace for
	// temporary credentials at IAM (OIDC federation): no long-lived key is stored in the cluster.
	// +optional
	WorkloadIdentity *WorkloadIdentity `json:"workloadIdentity,omitempty"`

	// SecretRef names a Secret in the provider's own namespace that holds either accessKey and
	// secretKey (and optionally securityToken), or token.
	// +optional
	SecretRef *SecretReference `json:"secretRef,omitempty"`
}

// ClusterKmsProviderAuth says how the operator authenticates to KMS for a ClusterKmsProvider.
// Exactly one method is set.
// +kubebuilder:validation:XValidation:rule="[has(self.workloadIdentity), has(self.nodeAgency), has(self.podIdentity), has(self.secretRef)].filter(m, m).size() == 1",message="set exactly one authentication method in spec.auth: workloadIdentity, nodeAgency, podIdentity or secretRef"
type ClusterKmsProviderAuth struct {
	// WorkloadIdentity exchanges a token of the named service account for temporary credentials
	// at IAM (OIDC federation).
	// +optional
	WorkloadIdentity *ClusterWorkloadIdentity `json:"workloadIdentity,omitempty"`

	// NodeAgency uses the temporary credentials of the IAM agency of the node the operator runs
	// on, from the ECS metadata service.
	// +optional
	NodeAgency *NodeAgency `json:"nodeAgency,omitempty"`

	// PodIdentity uses the temporary credentials that CCE Pod Identity gives the operator's own
	// service account, through a pod identity association.
	// +optional
	PodIdentity *PodIdentity `json:"podIdentity,omitempty"`

	// SecretRef names a Secret that holds either accessKey and secretKey (and optionally
	// securityToken), or token.
	// +optional
	SecretRef *ClusterSecretReference `json:"secretRef,omitempty"`
}

// WorkloadIdentity is OIDC federation with a Kubernetes service account token: the operator
// requests a short-lived token for the service account (TokenRequest), exchanges it at IAM for
// credentials scoped to the project, and caches them until shortly before they expire.
type WorkloadIdentity struct {
	// ServiceAccountRef names the service account of the selector's namespace to act as.
	// +required
	ServiceAccountRef ServiceAccountReference `json:"serviceAccountRef"`

	IdentityFederation `json:",inline"`
}

// ClusterWorkloadIdentity is WorkloadIdentity for a ClusterKmsProvider, whose service account
// may live in any namespace.
type ClusterWorkloadIdentity struct {
	// ServiceAccountRef names the service account to act as.
	// +required
	ServiceAccountRef ClusterServiceAccountReference `json:"serviceAccountRef"`

	IdentityFederation `json:",inline"`
}

// IdentityFederation is the IAM side of a workload identity: the identity provider that trusts
// the cluster, and where IAM is.
type IdentityFederation struct {
	// IdentityProviderID is the ID of the IAM OIDC identity provider that trusts the cluster's
	// service account issuer.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9._-]+$`
	IdentityProviderID string `json:"identityProviderId"`

	// IAMEndpoint overrides the IAM endpoint https://iam.<region>.myhuaweicloud.com, for private
	// or dedicated clouds and for the emulator. Plain http:// is refused unless the operator runs
	// with --allow-insecure-endpoints.
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['https', 'http'] && url(self).getHostname() != ''",message="must be an absolute http or https URL"
	// +kubebuilder:validation:XValidation:rule="!self.contains('?') && !self.contains('#')",message="must not contain a query or fragment"
	IAMEndpoint string `json:"iamEndpoint,omitempty"`
}

// ServiceAccountReference names a service account of the selector's namespace and the audiences
// of the tokens minted for it.
type ServiceAccountReference struct {
	// Name of the service account.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// Audiences of the token: the client ID that the IAM identity provider expects. An audience
	// that the Kubernetes API server accepts is refused: such a token is never sent outside the
	// cluster. Besides the ones listed here, the operator refuses the cluster's issuer.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="self.all(a, !(a in ['https://kubernetes.default.svc', 'https://kubernetes.default.svc/', 'https://kubernetes.default.svc.cluster.local', 'https://kubernetes.default.svc.cluster.local/', 'kubernetes.default.svc', 'kubernetes.default.svc.cluster.local', 'kubernetes', 'api']))",message="must not hold an audience the Kubernetes API server accepts, such as https://kubernetes.default.svc: use the IAM identity provider's client ID"
	Audiences []string `json:"audiences"`
}

// ClusterServiceAccountReference names a service account of any namespace and the audiences of
// the tokens minted for it.
type ClusterServiceAccountReference struct {
	ServiceAccountReference `json:",inline"`

	// Namespace of the service account; it defaults to the operator's cluster resource namespace
	// (--cluster-resource-namespace).
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace,omitempty"`
}

// NodeAgency takes the credentials of the node's IAM agency from the ECS metadata service
// (--metadata-endpoint). It has no settings.
type NodeAgency struct{}

// PodIdentity takes the credentials that CCE Pod Identity gives the operator's own service
// account, from the endpoint and token file that CCE names in the operator's environment
// (HC_CONTAINER_CREDENTIALS_FULL_URI, HC_CONTAINER_AUTHORIZATION_TOKEN_FILE). It has no settings.
type PodIdentity struct{}

// ClusterSecretReference names a Secret of a cluster-scoped provider.
type ClusterSecretReference struct {
	// Name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// Namespace of the Secret; it defaults to the operator's cluster resource namespace
	// (--cluster-resource-namespace).
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace,omitempty"`
}

// KmsProviderSpec is a KMS project and the credentials to call it with, for the selectors of its
// namespace.
// +kubebuilder:validation:XValidation:rule="has(self.region) || has(self.endpoint)",message="one of spec.region or spec.endpoint is required"
type KmsProviderSpec struct {
	KMSLocation `json:",inline"`

	// Auth says how the operator authenticates to KMS.
	// +required
	Auth KmsProviderAuth `json:"auth"`
}

// ClusterKmsProviderSpec is a KMS project and the credentials to call it with, for the selectors
// of the namespaces its conditions allow.
// +kubebuilder:validation:XValidation:rule="has(self.region) || has(self.endpoint)",message="one of spec.region or spec.endpoint is required"
type ClusterKmsProviderSpec struct {
	KMSLocation `json:",inline"`

	// Auth says how the operator authenticates to KMS.
	// +required
	Auth ClusterKmsProviderAuth `json:"auth"`

	// Conditions say which namespaces may use the provider: a namespace may when any condition
	// matches it. No conditions allow every namespace.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	Conditions []ClusterKmsProviderCondition `json:"conditions,omitempty"`
}

// ClusterKmsProviderCondition matches the namespaces that its namespaceSelector selects or that
// its namespaces list names.
// +kubebuilder:validation:XValidation:rule="has(self.namespaceSelector) || has(self.namespaces)",message="set namespaceSelector, namespaces or both"
type ClusterKmsProviderCondition struct {
	// NamespaceSelector selects namespaces by label.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`

	// Namespaces names namespaces.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=63
	Namespaces []string `json:"namespaces,omitempty"`
}

// KmsProviderStatus reports whether the provider's credentials work, and who uses them.
type KmsProviderStatus struct {
	// Conditions hold Ready, whose reason says what to do when it is False.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// ObservedGeneration is the generation that the last validation answered.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// LastValidationTime is when the credentials were last found to work: by a call of the
	// provider's own, or by a selector's successful listing through it.
	// +optional
	LastValidationTime *metav1.Time `json:"lastValidationTime,omitempty"`

	// LastHandledForceSync is the value of the kms.keysync.dev/force-sync annotation that the
	// last validation answered.
	// +optional
	LastHandledForceSync string `json:"lastHandledForceSync,omitempty"`

	// Selectors counts the KmsKeySelectors that refer to the provider from namespaces it allows.
	// +optional
	Selectors int32 `json:"selectors,omitempty"`
}

// KmsProvider holds a KMS project and its credentials for the KmsKeySelectors of its namespace,
// which refer to it through spec.providerRef.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=kmsp,categories=kms
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Selectors",type=integer,JSONPath=`.status.selectors`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type KmsProvider struct {
	metav1.TypeMeta `json:",inline"`

	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec KmsProviderSpec `json:"spec"`

	// +optional
	Status KmsProviderStatus `json:"status,omitempty"`
}

// KmsProviderList contains a list of KmsProvider.
// +kubebuilder:object:root=true
type KmsProviderList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []KmsProvider `json:"items"`
}

// ClusterKmsProvider holds a KMS project and its credentials for the KmsKeySelectors of every
// namespace its conditions allow. Its Secret lives in a namespace of the cluster admin's choice,
// by default the operator's cluster resource namespace.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=ckmsp,categories=kms
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Selectors",type=integer,JSONPath=`.status.selectors`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ClusterKmsProvider struct {
	metav1.TypeMeta `json:",inline"`

	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec ClusterKmsProviderSpec `json:"spec"`

	// +optional
	Status KmsProviderStatus `json:"status,omitempty"`
}

// ClusterKmsProviderList contains a list of ClusterKmsProvider.
// +kubebuilder:object:root=true
type ClusterKmsProviderList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ClusterKmsProvider `json:"items"`
}
