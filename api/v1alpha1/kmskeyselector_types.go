package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The schema limits below restate the rules of internal/kms/rules.go, where they are defined
// once; a test keeps the generated CRD in step with them.

// KmsKeySelectorSpec says which KMS keys to list, with which credentials, and where to write them.
// +kubebuilder:validation:XValidation:rule="has(self.provider) != has(self.providerRef)",message="set exactly one of spec.provider and spec.providerRef"
// +kubebuilder:validation:XValidation:rule="(has(self.allKeys) && self.allKeys) != ((has(self.tags) && size(self.tags) > 0) || (has(self.matches) && size(self.matches) > 0))",message="set spec.tags or spec.matches to choose keys, or spec.allKeys: true to list every key of the project, not both"
type KmsKeySelectorSpec struct {
	// Provider says, inline, where the KMS API is and which credentials of the selector's
	// namespace to call it with. Set it or ProviderRef.
	// +optional
	Provider *ProviderSpec `json:"provider,omitempty"`

	// ProviderRef names a KmsProvider of the selector's namespace, or a ClusterKmsProvider that
	// allows the namespace, whose project and credentials the selector lists with. Set it or
	// Provider.
	// +optional
	ProviderRef *ProviderReference `json:"providerRef,omitempty"`

	// Tags choose keys by tag: at most 10 tag keys, each unique. Different tag keys are ANDed,
	// the values of one key are ORed, and an empty values list matches any value of that key.
	// Tag keys and values are case-sensitive. Set tags, matches or both, or allKeys.
	// +optional
	// +listType=map
	// +listMapKey=key
	// +kubebuilder:validation:MaxItems=10
	Tags []TagSelector `json:"tags,omitempty"`

	// Matches choose keys by a key field: at most one, resource_name, a case-sensitive substring
	// of the key alias. A match is ANDed with the tags.
	// +optional
	// +listType=map
	// +listMapKey=key
	// +kubebuilder:validation:MaxItems=1
	Matches []MatchSelector `json:"matches,omitempty"`

	// AllKeys, when true, lists every key of the project. It is the only way to do so: a
	// selector without tags or matches is refused, so that a mistyped or dropped field cannot
	// select every key. Do not combine it with tags or matches.
	// +optional
	AllKeys bool `json:"allKeys,omitempty"`

	// RefreshInterval is how often the keys are listed again: a Go duration such as 30s, 5m or
	// 1h, at least 10s; the default is 5m. Days (d) are not accepted. Each selector refreshes at
	// a fixed offset within the interval, derived from its question: selectors asking the same
	// question refresh together and share one listing, and different questions are spread over
	// the interval.
	// +optional
	// +kubebuilder:default="5m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule=`self.matches('^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$')`,message="must be a Go duration such as 30s, 5m or 1h; days (d) are not accepted"
	// +kubebuilder:validation:XValidation:rule=`!self.matches('^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') || duration(self) >= duration('10s')`,message="must be at least 10s"
	RefreshInterval *metav1.Duration `json:"refreshInterval,omitempty"`

	// PageSize is the number of keys requested per ListKmsByTags call, from 1 to 1000. The
	// default, 1000, is the API's maximum and needs the fewest calls.
	// +optional
	// +kubebuilder:default=1000
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	PageSize *int32 `json:"pageSize,omitempty"`

	// Suspend, when true, stops syncing; the ConfigMap keeps its last content.
	// +optional
	Suspend bool `json:"suspend,omitempty"`

	// Target describes the ConfigMap the keys are written to.
	// +optional
	// +kubebuilder:default={}
	Target TargetSpec `json:"target,omitempty"`
}

// ProviderSpec locates the KMS API and says how to authenticate to it: with a workload identity
// of the selector's namespace, or with the credentials of a Secret there.
// +kubebuilder:validation:XValidation:rule="has(self.region) || has(self.endpoint)",message="one of spec.provider.region or spec.provider.endpoint is required"
// +kubebuilder:validation:XValidation:rule="has(self.workloadIdentity) != has(self.credentialsSecretRef)",message="set exactly one of spec.provider.workloadIdentity and spec.provider.credentialsSecretRef"
type ProviderSpec struct {
	KMSLocation `json:",inline"`

	// WorkloadIdentity exchanges a token of a service account of the selector's namespace for
	// temporary credentials at IAM (OIDC federation): no long-lived key is stored in the cluster.
	// +optional
	WorkloadIdentity *WorkloadIdentity `json:"workloadIdentity,omitempty"`

	// CredentialsSecretRef names a Secret in the selector's namespace that holds either
	// accessKey and secretKey (and optionally securityToken), or token.
	// +optional
	CredentialsSecretRef *SecretReference `json:"credentialsSecretRef,omitempty"`
}

// ProviderReference names a KmsProvider or a ClusterKmsProvider.
type ProviderReference struct {
	// Kind is KmsProvider, for a provider of the selector's own namespace, or ClusterKmsProvider.
	// +required
	// +kubebuilder:validation:Enum=KmsProvider;ClusterKmsProvider
	Kind string `json:"kind"`

	// Name of the provider.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`
}

// The kinds a ProviderReference names.
const (
	KindKmsProvider        = "KmsProvider"
	KindClusterKmsProvider = "ClusterKmsProvider"
)

// SecretReference names a Secret in the same namespace.
type SecretReference struct {
	// Name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`
}

// TagSelector chooses keys carrying a tag.
type TagSelector struct {
	// Key is the tag key, case-sensitive: 1 to 36 characters, none of them * < > \ = or a
	// control character.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=36
	// +kubebuilder:validation:XValidation:rule=`!self.matches('[\\x00-\\x1f*<>\\\\=]')`,message="may not contain * < > \\ = or control characters"
	Key string `json:"key"`

	// Values are the tag values to choose, case-sensitive and ORed: at most 64, unique, each at
	// most 43 characters, none of them * < > \ = or a control character. An empty list matches
	// any value of the key.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=43
	// +kubebuilder:validation:items:XValidation:rule=`!self.matches('[\\x00-\\x1f*<>\\\\=]')`,message="may not contain * < > \\ = or control characters"
	Values []string `json:"values,omitempty"`
}

// MatchField is a key field that a match searches.
// +kubebuilder:validation:Enum=resource_name
type MatchField string

// MatchFieldResourceName searches the key alias, case-sensitively, for a substring.
const MatchFieldResourceName MatchField = "resource_name"

// MatchSelector matches keys whose field contains a value.
type MatchSelector struct {
	// Key is the field to search; resource_name (the key alias) is the only one.
	// +required
	Key MatchField `json:"key"`

	// Value is the substring to look for, case-sensitive: 1 to 255 characters.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=255
	Value string `json:"value"`
}

// DeletionPolicy says what happens to the ConfigMap when the selector is deleted.
// +kubebuilder:validation:Enum=Delete;Retain
type DeletionPolicy string

const (
	// DeletionPolicyDelete makes the selector the ConfigMap's owner, so it is garbage-collected.
	DeletionPolicyDelete DeletionPolicy = "Delete"
	// DeletionPolicyRetain leaves the ConfigMap in place when the selector is deleted.
	DeletionPolicyRetain DeletionPolicy = "Retain"
)

// TargetSpec describes the output ConfigMap.
// +kubebuilder:validation:XValidation:rule="!has(self.mergePolicy) || self.mergePolicy != 'Replace' || has(self.data)",message="mergePolicy Replace writes the data entries only: set data"
// +kubebuilder:validation:XValidation:rule="has(self.configMapName) == has(oldSelf.configMapName) && (!has(self.configMapName) || self.configMapName == oldSelf.configMapName)",message="configMapName is immutable"
type TargetSpec struct {
	// ConfigMapName is the ConfigMap to write; it defaults to the selector's name and cannot be
	// changed later.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	ConfigMapName string `json:"configMapName,omitempty"`

	// DeletionPolicy is Delete, the default (the ConfigMap is garbage-collected with the
	// selector), or Retain (the ConfigMap stays).
	// +optional
	// +kubebuilder:default=Delete
	DeletionPolicy DeletionPolicy `json:"deletionPolicy,omitempty"`

	// Data maps a ConfigMap entry name to a CEL expression that renders it from keys, the
	// matching keys sorted by ID, each with the fields of keys.json: id, alias, state (such as
	// Enabled), spec, usage, origin, tags (a map) and creationDate (RFC 3339, or empty). A
	// string result is written as it is, any other as JSON with sorted map keys. The functions
	// are listed in the README's Output expressions section; none reaches the network, the file
	// system, the environment or the clock, and each selector's expressions run within a cost
	// budget.
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	// +kubebuilder:validation:XValidation:rule="self.all(k, k.size() <= 253 && k.matches('^[-._a-zA-Z0-9]+$') && k != '.' && k != '..')",message="entry names must be ConfigMap keys: at most 253 of letters, digits, '-', '_' and '.'"
	// +kubebuilder:validation:XValidation:rule="self.all(k, self[k].size() <= 4096)",message="an expression may have at most 4096 characters"
	Data map[string]string `json:"data,omitempty"`

	// MergePolicy is Merge (the default: the "<key_id>: <State>" entries and keys.json, and the
	// data entries, which win on a clash) or Replace (the data entries only).
	// +optional
	MergePolicy MergePolicy `json:"mergePolicy,omitempty"`
}

// MergePolicy says how the entries of spec.target.data combine with the default ones.
// +kubebuilder:validation:Enum=Merge;Replace
type MergePolicy string

const (
	// MergePolicyMerge writes the default entries and the data entries; the data entries win on
	// a clash.
	MergePolicyMerge MergePolicy = "Merge"
	// MergePolicyReplace writes the data entries only.
	MergePolicyReplace MergePolicy = "Replace"
)

// KmsKeySelectorStatus reports the last sync.
type KmsKeySelectorStatus struct {
	// Conditions hold Ready, whose reason says what to do when it is False.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// ObservedGeneration is the generation that the last completed sync attempt answered; the
	// Ready condition tells whether it succeeded.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// LastSyncTime is when a complete and successful listing last changed this status: the keys,
	// their states or counts, a condition, or a request answered. A refresh that changes nothing
	// writes nothing, so the time of the last listing is the metric
	// kms_key_sync_selector_last_sync_timestamp_seconds.
	// +optional
	LastSyncTime *metav1.Time `json:"lastSyncTime,omitempty"`

	// NextSyncTime is when the keys are listed next after a failure: the next retry, or for an
	// ExpressionFailed the next refresh. Unset while the selector is Synced, as its refreshes
	// follow its slot in the interval, and while a failure waits for a spec change. A spec
	// change or a force-sync comes sooner.
	// +optional
	NextSyncTime *metav1.Time `json:"nextSyncTime,omitempty"`

	// ConsecutiveFailures counts the sync attempts that failed since the last success; the
	// delay before the next retry doubles with each.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ConsecutiveFailures int32 `json:"consecutiveFailures,omitempty"`

	// ConfigMapName is the ConfigMap the keys are written to.
	// +optional
	ConfigMapName string `json:"configMapName,omitempty"`

	// LastHandledForceSync is the value of the kms.keysync.dev/force-sync annotation that the
	// last completed sync attempt answered; the Ready condition tells whether it succeeded.
	// +optional
	LastHandledForceSync string `json:"lastHandledForceSync,omitempty"`

	// ContentDigest is the SHA-256 of the data and binaryData the operator last wrote to the
	// ConfigMap. The operator repairs a ConfigMap whose content has another digest, whatever its
	// kms.keysync.dev/content-digest annotation says: whoever may edit the ConfigMap may edit
	// that annotation too, but not this status.
	// +optional
	ContentDigest string `json:"contentDigest,omitempty"`

	// ProviderDigest identifies the provider settings (the KMS location and the authentication)
	// that the last completed sync attempt used. When they change, as when an admin fixes or
	// moves the provider that spec.providerRef names, the selector lists again at once. Empty
	// when that attempt found no provider it could use.
	// +optional
	ProviderDigest string `json:"providerDigest,omitempty"`

	// KeyCount is the number of matching keys. Under mergePolicy Replace the ConfigMap holds the
	// expressions' entries rather than one per key.
	// +optional
	KeyCount *int32 `json:"keyCount,omitempty"`

	// StateCounts counts the matching keys by state.
	// +optional
	StateCounts *StateCounts `json:"stateCounts,omitempty"`

	// Keys lists the first 100 matching keys by id; KeyCount gives the full number.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=100
	Keys []KeyStatus `json:"keys,omitempty"`
}

// StateCounts counts keys by state.
type StateCounts struct {
	// +optional
	PendingActivation int32 `json:"pendingActivation,omitempty"`
	// +optional
	Enabled int32 `json:"enabled,omitempty"`
	// +optional
	Disabled int32 `json:"disabled,omitempty"`
	// +optional
	PendingDeletion int32 `json:"pendingDeletion,omitempty"`
	// +optional
	PendingImport int32 `json:"pendingImport,omitempty"`
	// +optional
	Unknown int32 `json:"unknown,omitempty"`
}

// KeyStatus is a short view of one key.
type KeyStatus struct {
	// ID is the key id.
	// +required
	ID string `json:"id"`
	// Alias is the key alias.
	// +optional
	Alias string `json:"alias,omitempty"`
	// State is the key state: PendingActivation, Enabled, Disabled, PendingDeletion,
	// PendingImport or Unknown.
	// +required
	State string `json:"state"`
}

// KmsKeySelector keeps a ConfigMap in step with the KMS keys that match its tags.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=kks,categories=kms
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Keys",type=integer,JSONPath=`.status.keyCount`
// +kubebuilder:printcolumn:name="Last Change",type=date,JSONPath=`.status.lastSyncTime`
// +kubebuilder:printcolumn:name="Retry At",type=string,JSONPath=`.status.nextSyncTime`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="metadata.name must be at most 63 characters: it is the value of the kms.keysync.dev/selector label on the ConfigMap"
type KmsKeySelector struct {
	metav1.TypeMeta `json:",inline"`

	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec KmsKeySelectorSpec `json:"spec"`

	// +optional
	Status KmsKeySelectorStatus `json:"status,omitempty"`
}

// KmsKeySelectorList contains a list of KmsKeySelector.
// +kubebuilder:object:root=true
type KmsKeySelectorList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []KmsKeySelector `json:"items"`
}
