package controllers_test

import (
	"fmt"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

// validSpec is a selector spec the API server accepts; each case below breaks one rule of it.
func validSpec() map[string]any {
	return map[string]any{
		"provider": map[string]any{
			"region":               "cn-north-4",
			"projectId":            "0123456789abcdef0123456789abcdef",
			"credentialsSecretRef": map[string]any{"name": "kms-credentials"},
		},
		"tags":    []any{map[string]any{"key": "env", "values": []any{"prod", "staging"}}},
		"matches": []any{map[string]any{"key": "resource_name", "value": "payments"}},
	}
}

// The schema's messages for a refreshInterval that is not a duration and for a forbidden tag
// character.
const (
	notADuration   = "must be a Go duration such as 30s, 5m or 1h; days (d) are not accepted"
	forbiddenChars = `may not contain * < > \ = or control characters`
)

type specEdit func(spec map[string]any)

func set(value any, path ...string) specEdit {
	return func(spec map[string]any) {
		Expect(unstructured.SetNestedField(spec, value, path...)).To(Succeed())
	}
}

func remove(path ...string) specEdit {
	return func(spec map[string]any) { unstructured.RemoveNestedField(spec, path...) }
}

func tags(n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = map[string]any{"key": fmt.Sprintf("k%d", i)}
	}
	return out
}

func tagKey(k string) specEdit {
	return set([]any{map[string]any{"key": k}}, "tags")
}

func tagValue(v string) specEdit {
	return set([]any{map[string]any{"key": "env", "values": []any{v}}}, "tags")
}

func matchValue(v string) specEdit {
	return set([]any{map[string]any{"key": "resource_name", "value": v}}, "matches")
}

func selectorObject(ns, name string, edits ...specEdit) *unstructured.Unstructured {
	spec := validSpec()
	for _, e := range edits {
		e(spec)
	}
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetAPIVersion(kmsv1alpha1.GroupVersion.String())
	u.SetKind("KmsKeySelector")
	u.SetNamespace(ns)
	u.SetName(name)
	return u
}

var _ = Describe("KmsKeySelector schema", func() {
	var ns string
	BeforeEach(func() { ns = newFixture().Namespace })

	long := strings.Repeat

	DescribeTable("rejects an invalid selector with a message that names the field",
		func(field, reason string, edits ...specEdit) {
			err := k8sClient.Create(ctx(), selectorObject(ns, "invalid", edits...))
			Expect(err).To(HaveOccurred())
			Expect(err.Error()).To(ContainSubstring(field))
			Expect(err.Error()).To(ContainSubstring(reason))
		},
		Entry("no provider", "spec.provider", "set exactly one of spec.provider and spec.providerRef", remove("provider")),
		Entry("both provider and providerRef", "spec.providerRef", "set exactly one of spec.provider and spec.providerRef",
			set(map[string]any{"kind": "KmsProvider", "name": "team"}, "providerRef")),
		Entry("providerRef of another kind", "spec.providerRef.kind", "Unsupported value", remove("provider"),
			set(map[string]any{"kind": "Secret", "name": "team"}, "providerRef")),
		Entry("providerRef without a name", "spec.providerRef.name", "Required", remove("provider"),
			set(map[string]any{"kind": "ClusterKmsProvider"}, "providerRef")),
		Entry("no projectId", "spec.provider.projectId", "Required", remove("provider", "projectId")),
		Entry("empty projectId", "spec.provider.projectId", "at least 1", set("", "provider", "projectId")),
		Entry("projectId of 65 characters", "spec.provider.projectId", "may not be more than 64", set(long("a", 65), "provider", "projectId")),
		Entry("projectId with a slash", "spec.provider.projectId", "should match", set("abc/def", "provider", "projectId")),
		Entry("neither region nor endpoint", "spec.provider", "one of spec.provider.region or spec.provider.endpoint", remove("provider", "region")),
		Entry("upper-case region", "spec.provider.region", "should match", set("CN-North-4", "provider", "region")),
		Entry("region of 65 characters", "spec.provider.region", "may not be more than 64", set("cn-"+long("a", 62), "provider", "region")),
		Entry("endpoint that is not a URL", "spec.provider.endpoint", "absolute http or https URL", set("not a url", "provider", "endpoint")),
		Entry("endpoint with another scheme", "spec.provider.endpoint", "absolute http or https URL", set("ftp://kms.example.com", "provider", "endpoint")),
		Entry("endpoint without a host", "spec.provider.endpoint", "absolute http or https URL", set("https://", "provider", "endpoint")),
		Entry("endpoint with a query", "spec.provider.endpoint", "query or fragment", set("https://kms.example.com/?a=b", "provider", "endpoint")),
		Entry("no credentialsSecretRef", "spec.provider", "set exactly one of spec.provider.workloadIdentity and spec.provider.credentialsSecretRef", remove("provider", "credentialsSecretRef")),
		Entry("workloadIdentity without audiences", "spec.provider.workloadIdentity.serviceAccountRef.audiences", "Required", remove("provider", "credentialsSecretRef"),
			set(map[string]any{"serviceAccountRef": map[string]any{"name": "sa"}, "identityProviderId": "idp"}, "provider", "workloadIdentity")),
		Entry("workloadIdentity for the API server's audience", "spec.provider.workloadIdentity.serviceAccountRef.audiences", "an audience the Kubernetes API server accepts", remove("provider", "credentialsSecretRef"),
			set(map[string]any{"serviceAccountRef": map[string]any{"name": "sa", "audiences": []any{"kms-key-sync", "https://kubernetes.default.svc"}}, "identityProviderId": "idp"}, "provider", "workloadIdentity")),
		Entry("workloadIdentity without identityProviderId", "spec.provider.workloadIdentity.identityProviderId", "Required", remove("provider", "credentialsSecretRef"),
			set(map[string]any{"serviceAccountRef": map[string]any{"name": "sa", "audiences": []any{"a"}}}, "provider", "workloadIdentity")),
		Entry("workloadIdentity with an iamEndpoint that is not a URL", "spec.provider.workloadIdentity.iamEndpoint", "absolute http or https URL", remove("provider", "credentialsSecretRef"),
			set(map[string]any{"serviceAccountRef": map[string]any{"name": "sa", "audiences": []any{"a"}}, "identityProviderId": "idp", "iamEndpoint": "iam"}, "provider", "workloadIdentity")),
		Entry("empty Secret name", "spec.provider.credentialsSecretRef.name", "at least 1", set("", "provider", "credentialsSecretRef", "name")),
		Entry("Secret name that is not a DNS name", "spec.provider.credentialsSecretRef.name", "should match", set("Bad_Name", "provider", "credentialsSecretRef", "name")),
		Entry("Secret name of 254 characters", "spec.provider.credentialsSecretRef.name", "may not be more than 253", set(long("a", 254), "provider", "credentialsSecretRef", "name")),
		Entry("11 tags", "spec.tags", "at most 10", set(tags(11), "tags")),
		Entry("empty tag key", "spec.tags[0].key", "at least 1", tagKey("")),
		Entry("tag key of 37 characters", "spec.tags[0].key", "may not be more than 36", tagKey(long("k", 37))),
		Entry("tag key of 37 non-ASCII characters", "spec.tags[0].key", "may not be more than 36", tagKey(long("é", 37))),
		Entry("tag key with *", "spec.tags[0].key", forbiddenChars, tagKey("a*b")),
		Entry("tag key with <", "spec.tags[0].key", forbiddenChars, tagKey("a<b")),
		Entry("tag key with >", "spec.tags[0].key", forbiddenChars, tagKey("a>b")),
		Entry(`tag key with \`, "spec.tags[0].key", forbiddenChars, tagKey(`a\b`)),
		Entry("tag key with =", "spec.tags[0].key", forbiddenChars, tagKey("a=b")),
		Entry("tag key with a control character", "spec.tags[0].key", forbiddenChars, tagKey("a\x01b")),
		Entry("tag key with a tab", "spec.tags[0].key", forbiddenChars, tagKey("a\tb")),
		Entry("tag value of 44 characters", "spec.tags[0].values[0]", "may not be more than 43", tagValue(long("v", 44))),
		Entry("tag value with *", "spec.tags[0].values[0]", forbiddenChars, tagValue("a*b")),
		Entry("tag value with <", "spec.tags[0].values[0]", forbiddenChars, tagValue("a<b")),
		Entry("tag value with >", "spec.tags[0].values[0]", forbiddenChars, tagValue("a>b")),
		Entry(`tag value with \`, "spec.tags[0].values[0]", forbiddenChars, tagValue(`a\b`)),
		Entry("tag value with =", "spec.tags[0].values[0]", forbiddenChars, tagValue("a=b")),
		Entry("tag value with a newline", "spec.tags[0].values[0]", forbiddenChars, tagValue("a\nb")),
		Entry("duplicate tag keys", "spec.tags[1]", "Duplicate value", set([]any{map[string]any{"key": "env"}, map[string]any{"key": "env"}}, "tags")),
		Entry("duplicate values of one key", "spec.tags[0].values[1]", "Duplicate value", set([]any{map[string]any{"key": "env", "values": []any{"a", "a"}}}, "tags")),
		Entry("a match key other than resource_name", "spec.matches[0].key", "Unsupported value", set([]any{map[string]any{"key": "key_alias", "value": "x"}}, "matches")),
		Entry("no match key", "spec.matches[0].key", "Required", set([]any{map[string]any{"value": "x"}}, "matches")),
		Entry("empty match value", "spec.matches[0].value", "at least 1", matchValue("")),
		Entry("match value of 256 characters", "spec.matches[0].value", "may not be more than 255", matchValue(long("m", 256))),
		Entry("two matches", "spec.matches", "at most 1", set([]any{map[string]any{"key": "resource_name", "value": "a"}, map[string]any{"key": "resource_name", "value": "b"}}, "matches")),
		Entry("negative refreshInterval", "spec.refreshInterval", notADuration, set("-5m", "refreshInterval")),
		Entry("zero refreshInterval", "spec.refreshInterval", "at least 10s", set("0s", "refreshInterval")),
		Entry("refreshInterval of 9s", "spec.refreshInterval", "at least 10s", set("9s", "refreshInterval")),
		Entry("refreshInterval that is not a duration", "spec.refreshInterval", notADuration, set("5 minutes", "refreshInterval")),
		Entry("refreshInterval in days", "spec.refreshInterval", notADuration, set("1d", "refreshInterval")),
		Entry("no tags and no matches", "spec", "set spec.tags or spec.matches to choose keys, or spec.allKeys: true", remove("tags"), remove("matches")),
		Entry("empty tags and matches", "spec", "set spec.tags or spec.matches to choose keys, or spec.allKeys: true", set([]any{}, "tags"), set([]any{}, "matches")),
		Entry("allKeys with tags", "spec", "not both", set(true, "allKeys"), remove("matches")),
		Entry("allKeys with matches", "spec", "not both", set(true, "allKeys"), remove("tags")),
		Entry("pageSize 0", "spec.pageSize", "greater than or equal to 1", set(int64(0), "pageSize")),
		Entry("negative pageSize", "spec.pageSize", "greater than or equal to 1", set(int64(-1), "pageSize")),
		Entry("pageSize 1001", "spec.pageSize", "less than or equal to 1000", set(int64(1001), "pageSize")),
		Entry("unknown deletionPolicy", "spec.target.deletionPolicy", "Unsupported value", set("Orphan", "target", "deletionPolicy")),
		Entry("configMapName that is not a DNS name", "spec.target.configMapName", "should match", set("Keys_Map", "target", "configMapName")),
		Entry("configMapName of 254 characters", "spec.target.configMapName", "may not be more than 253", set(long("c", 254), "target", "configMapName")),
		Entry("suspend that is not a boolean", "spec.suspend", "boolean", set("yes", "suspend")),
	)

	DescribeTable("accepts every limit exactly",
		func(edits ...specEdit) {
			Expect(k8sClient.Create(ctx(), selectorObject(ns, "valid", edits...))).To(Succeed())
		},
		Entry("10 tags", set(tags(10), "tags")),
		Entry("tag key of 36 characters", tagKey(long("k", 36))),
		Entry("tag key of 36 non-ASCII characters", tagKey(long("é", 36))),
		Entry("tag value of 43 characters", tagValue(long("v", 43))),
		Entry("empty tag value", tagValue("")),
		Entry("match value of 255 characters", matchValue(long("m", 255))),
		Entry("refreshInterval of 10s", set("10s", "refreshInterval")),
		Entry("pageSize 1", set(int64(1), "pageSize")),
		Entry("pageSize 1000", set(int64(1000), "pageSize")),
		Entry("endpoint instead of region", remove("provider", "region"), set("https://kms.example.internal", "provider", "endpoint")),
		Entry("tags without matches", remove("matches")),
		Entry("matches without tags", remove("tags")),
		Entry("allKeys alone", remove("tags"), remove("matches"), set(true, "allKeys")),
		Entry("refreshInterval of 1h30m", set("1h30m", "refreshInterval")),
	)

	// A value that is not a duration gets one message that says what a duration is, and not the
	// minimum's rule or CEL's conversion error on top of it.
	It("explains a refreshInterval that is not a duration in plain words, once", func() {
		err := k8sClient.Create(ctx(), selectorObject(ns, "minutes", set("5 minutes", "refreshInterval")))
		Expect(err).To(HaveOccurred())
		Expect(err.Error()).To(ContainSubstring(`spec.refreshInterval: Invalid value: "5 minutes": ` + notADuration))
		Expect(err.Error()).NotTo(ContainSubstring("at least 10s"))
		Expect(err.Error()).NotTo(ContainSubstring("Duration"))
		Expect(err.Error()).NotTo(ContainSubstring("should match"))
	})

	It("names the forbidden tag characters instead of a regular expression", func() {
		err := k8sClient.Create(ctx(), selectorObject(ns, "stars", tagKey("a*"), tagValue("b=")))
		Expect(err).To(HaveOccurred())
		Expect(err.Error()).To(ContainSubstring(forbiddenChars))
		Expect(err.Error()).NotTo(ContainSubstring(`\x00`))
	})

	It("defaults refreshInterval, pageSize and deletionPolicy", func() {
		Expect(k8sClient.Create(ctx(), selectorObject(ns, "defaults"))).To(Succeed())
		sel := &kmsv1alpha1.KmsKeySelector{}
		Expect(k8sClient.Get(ctx(), client.ObjectKey{Namespace: ns, Name: "defaults"}, sel)).To(Succeed())
		Expect(sel.Spec.RefreshInterval.Duration.String()).To(Equal("5m0s"))
		Expect(*sel.Spec.PageSize).To(Equal(int32(1000)))
		Expect(sel.Spec.Target.DeletionPolicy).To(Equal(kmsv1alpha1.DeletionPolicyDelete))
	})

	It("refuses to change spec.target.configMapName once set", func() {
		Expect(k8sClient.Create(ctx(), selectorObject(ns, "immutable", set("first", "target", "configMapName")))).To(Succeed())
		sel := &kmsv1alpha1.KmsKeySelector{}
		Expect(k8sClient.Get(ctx(), client.ObjectKey{Namespace: ns, Name: "immutable"}, sel)).To(Succeed())
		// A patch without a resourceVersion, so that a concurrent status write cannot turn the
		// answer into a conflict.
		original := sel.DeepCopy()
		sel.Spec.Target.ConfigMapName = "second"
		err := k8sClient.Patch(ctx(), sel, client.MergeFrom(original))
		Expect(err).To(HaveOccurred())
		Expect(err.Error()).To(ContainSubstring("spec.target"))
		Expect(err.Error()).To(ContainSubstring("configMapName is immutable"))
	})
})
