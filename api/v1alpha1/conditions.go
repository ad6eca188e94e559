package v1alpha1

import "time"

// The conditions that KmsKeySelectors and providers report. Ready says whether the object is
// in step and, when it is not, why; Reconciling and Stalled say the same in the terms of kstatus
// (Flux, Argo CD, kubectl wait, cli-utils), so that a GitOps tool can tell an object that is
// busy from one that needs a person.
const (
	ConditionReady = "Ready"
	// ConditionReconciling is True, with ReasonProgressing, while a first sync, a spec change or a
	// force-sync is being answered. It is removed when the outcome is recorded.
	ConditionReconciling = "Reconciling"
	// ConditionStalled is True, with the reason of Ready, while the last attempt failed in a way
	// that retrying cannot mend: only a change of the spec, of the provider, or of the cluster
	// can. It is removed otherwise.
	ConditionStalled = "Stalled"
)

// ReasonProgressing is the reason of a Reconciling condition.
const ReasonProgressing = "Progressing"

// Stalls tells whether a failure of Ready's reason is one that retrying cannot mend. Other
// failures are retried: a GitOps tool sees them as still progressing.
func Stalls(reason string) bool {
	switch reason {
	case ReasonInvalidSpec, ReasonInsecureEndpoint, ReasonProviderNotAllowed, ReasonTargetConflict:
		return true
	}
	return false
}

// Reasons of the Ready condition. Each tells the user what to do; see the README's table.
const (
	// ReasonSynced: the ConfigMap holds every key that matched at LastSyncTime.
	ReasonSynced = "Synced"
	// ReasonSuspended: spec.suspend is true; the ConfigMap keeps its last content.
	ReasonSuspended = "Suspended"
	// ReasonCredentialsNotFound: the Secret named by spec.provider.credentialsSecretRef is missing.
	ReasonCredentialsNotFound = "CredentialsNotFound"
	// ReasonCredentialsInvalid: the Secret is malformed, or KMS rejected the credentials.
	ReasonCredentialsInvalid = "CredentialsInvalid"
	// ReasonKMSRequestFailed: KMS could not be reached or answered with an error.
	ReasonKMSRequestFailed = "KMSRequestFailed"
	// ReasonKMSThrottled: KMS answered 429; the operator backs off.
	ReasonKMSThrottled = "KMSThrottled"
	// ReasonInvalidSpec: the spec breaks a rule the schema cannot express.
	ReasonInvalidSpec = "InvalidSpec"
	// ReasonInsecureEndpoint: the endpoint is plain http:// and the operator does not allow it.
	ReasonInsecureEndpoint = "InsecureEndpoint"
	// ReasonTargetConflict: a ConfigMap of the target name exists and this selector does not own it.
	ReasonTargetConflict = "TargetConflict"
	// ReasonTargetTooLarge: the keys do not fit in one ConfigMap; the previous data stays.
	ReasonTargetTooLarge = "TargetTooLarge"
	// ReasonExpressionFailed: an expression of spec.target.data failed on the keys listed, or
	// ran over its cost budget; the previous data stays, and the selector tries again at its
	// next refresh.
	ReasonExpressionFailed = "ExpressionFailed"
	// ReasonProviderNotFound: the provider named by spec.providerRef does not exist.
	ReasonProviderNotFound = "ProviderNotFound"
	// ReasonProviderNotAllowed: the ClusterKmsProvider named by spec.providerRef does not allow
	// the selector's namespace.
	ReasonProviderNotAllowed = "ProviderNotAllowed"
	// ReasonIdentityExchangeFailed: temporary credentials could not be obtained for a keyless
	// provider (workload identity, node agency or pod identity); the message names what to check.
	ReasonIdentityExchangeFailed = "IdentityExchangeFailed"
	// ReasonValidated: a provider's credentials were accepted by KMS.
	ReasonValidated = "Validated"
)

// Well-known labels and annotations.
const (
	// ForceSyncAnnotation syncs the selector at once whenever its value changes.
	ForceSyncAnnotation = "kms.keysync.dev/force-sync"
	// SelectorLabel on a ConfigMap names the selector that owns it.
	SelectorLabel = "kms.keysync.dev/selector"
	// ManagedByLabel marks every ConfigMap the operator writes.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	// ManagedByValue is the value of ManagedByLabel.
	ManagedByValue = "kms-key-sync"
	// ContentDigestAnnotation on a ConfigMap is the SHA-256 of the data and binaryData the
	// operator wrote, for consumers that want to notice a change. The operator itself trusts
	// only the selector's status.contentDigest, which tenants cannot write.
	ContentDigestAnnotation = "kms.keysync.dev/content-digest"
)

// The ConfigMap entries other than the "<key_id>: <State>" ones.
const (
	// KeysJSONKey is the data entry that holds every key as a JSON array sorted by id.
	KeysJSONKey = "keys.json"
	// KeysJSONGzipKey is the binaryData entry that holds keys.json gzip-compressed, instead of
	// keys.json, when the plain form would not fit in a ConfigMap.
	KeysJSONGzipKey = "keys.json.gz"
)

// The keys of a credentials Secret: either SecretAccessKey and SecretSecretKey (with an optional
// SecretSecurityToken), or SecretToken.
const (
	SecretAccessKey     = "accessKey"
	SecretSecretKey     = "secretKey"
	SecretSecurityToken = "securityToken"
	SecretToken         = "token"
)

// MinRefreshInterval is the shortest spec.refreshInterval; the CRD enforces it.
const MinRefreshInterval = 10 * time.Second

// MaxNameLength is the longest selector name: the name is the value of SelectorLabel, and label
// values have at most 63 characters. The CRD enforces it.
const MaxNameLength = 63

// WorkloadIdentityAudiencesAnnotation on a ServiceAccount opts it in to workload identity: its
// value lists, comma-separated, the audiences the operator may request tokens of it for. The
// operator mints no token of a service account without it, nor for an audience it does not list.
const WorkloadIdentityAudiencesAnnotation = "kms.keysync.dev/workload-identity-audiences"
