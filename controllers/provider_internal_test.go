package controllers

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/identity"
)

func TestAllowsNamespace(t *testing.T) {
	selects := func(labels map[string]string) kmsv1alpha1.ClusterKmsProviderCondition {
		return kmsv1alpha1.ClusterKmsProviderCondition{NamespaceSelector: &metav1.LabelSelector{MatchLabels: labels}}
	}
	names := func(ns ...string) kmsv1alpha1.ClusterKmsProviderCondition {
		return kmsv1alpha1.ClusterKmsProviderCondition{Namespaces: ns}
	}
	cases := []struct {
		name       string
		conditions []kmsv1alpha1.ClusterKmsProviderCondition
		ns         string
		labels     map[string]string
		allowed    bool
	}{
		{"no conditions allow all", nil, "any", nil, true},
		{"by label", []kmsv1alpha1.ClusterKmsProviderCondition{selects(map[string]string{"team": "a"})}, "x", map[string]string{"team": "a"}, true},
		{"label differs", []kmsv1alpha1.ClusterKmsProviderCondition{selects(map[string]string{"team": "a"})}, "x", map[string]string{"team": "b"}, false},
		{"by name", []kmsv1alpha1.ClusterKmsProviderCondition{names("x", "y")}, "y", nil, true},
		{"name not listed", []kmsv1alpha1.ClusterKmsProviderCondition{names("x")}, "y", nil, false},
		{"any condition", []kmsv1alpha1.ClusterKmsProviderCondition{names("x"), selects(map[string]string{"team": "a"})}, "y", map[string]string{"team": "a"}, true},
		{"an empty selector selects all", []kmsv1alpha1.ClusterKmsProviderCondition{selects(nil)}, "y", nil, true},
	}
	for _, tc := range cases {
		p := &kmsv1alpha1.ClusterKmsProvider{Spec: kmsv1alpha1.ClusterKmsProviderSpec{Conditions: tc.conditions}}
		p.Name = "shared"
		err := p.Allows(tc.ns, tc.labels)
		if (err == nil) != tc.allowed {
			t.Errorf("%s: Allows = %v, want allowed %v", tc.name, err, tc.allowed)
		}
		if err != nil && (!strings.Contains(err.Error(), `ClusterKmsProvider "shared"`) || !strings.Contains(err.Error(), tc.ns)) {
			t.Errorf("%s: the message %q names neither the provider nor the namespace", tc.name, err)
		}
	}
}

func TestClusterProviderSecretDefaultsToTheClusterResourceNamespace(t *testing.T) {
	p := &kmsv1alpha1.ClusterKmsProvider{Spec: kmsv1alpha1.ClusterKmsProviderSpec{
		Auth: kmsv1alpha1.ClusterKmsProviderAuth{SecretRef: &kmsv1alpha1.ClusterSecretReference{Name: "creds"}},
	}}
	got, err := resolve(p, Options{ClusterResourceNamespace: "kms-key-sync-system"})
	if err != nil || got.secret.Namespace != "kms-key-sync-system" || got.secret.Name != "creds" {
		t.Fatalf("secret = %v, %v; want kms-key-sync-system/creds", got.secret, err)
	}
	p.Spec.Auth.SecretRef.Namespace = "platform"
	if got, _ := resolve(p, Options{ClusterResourceNamespace: "kms-key-sync-system"}); got.secret.Namespace != "platform" {
		t.Errorf("an explicit namespace was overridden: %v", got.secret)
	}
	p.Spec.Auth.SecretRef.Namespace = ""
	if _, err := resolve(p, Options{}); reasonOf(err) != kmsv1alpha1.ReasonInvalidSpec || !strings.Contains(err.Error(), "--cluster-resource-namespace") {
		t.Errorf("no namespace anywhere: err = %v, want InvalidSpec naming the flag", err)
	}
}

func TestProviderValidationFollowsItsSelectors(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	synced := func(ago, interval time.Duration, ready bool) kmsv1alpha1.KmsKeySelector {
		s := kmsv1alpha1.KmsKeySelector{}
		s.Spec.RefreshInterval = &metav1.Duration{Duration: interval}
		s.Status.LastSyncTime = &metav1.Time{Time: now.Add(-ago)}
		status := metav1.ConditionFalse
		if ready {
			status = metav1.ConditionTrue
		}
		s.Status.Conditions = []metav1.Condition{{Type: kmsv1alpha1.ConditionReady, Status: status}}
		return s
	}
	users := []kmsv1alpha1.KmsKeySelector{synced(time.Minute, time.Hour, true), synced(time.Second, 10*time.Minute, false)}
	if got := validationInterval(users); got != 10*time.Minute {
		t.Errorf("validationInterval = %v, want the shortest refresh interval, 10m", got)
	}
	if got := validationInterval(nil); got != DefaultRefreshInterval {
		t.Errorf("validationInterval without selectors = %v, want the default", got)
	}
	notListed := func(*kmsv1alpha1.KmsKeySelector) time.Time { return time.Time{} }
	at, n := recentSuccesses(users, now.Add(-10*time.Minute), notListed)
	if n != 1 || !at.Equal(now.Add(-time.Minute)) {
		t.Errorf("recentSuccesses = %v, %d; want the one Ready selector", at, n)
	}
	if _, n := recentSuccesses(users, now.Add(-30*time.Second), notListed); n != 0 {
		t.Errorf("a success older than the interval counted")
	}
	// An unchanged listing leaves the status as it was: the listing this process made counts.
	listedJustNow := func(*kmsv1alpha1.KmsKeySelector) time.Time { return now.Add(-time.Second) }
	if at, n := recentSuccesses(users, now.Add(-30*time.Second), listedJustNow); n != 1 || !at.Equal(now.Add(-time.Second)) {
		t.Errorf("recentSuccesses with an unchanged listing a second ago = %v, %d; want it", at, n)
	}
}

func TestClusterWorkloadIdentityDefaultsToTheClusterResourceNamespace(t *testing.T) {
	p := &kmsv1alpha1.ClusterKmsProvider{Spec: kmsv1alpha1.ClusterKmsProviderSpec{
		KMSLocation: kmsv1alpha1.KMSLocation{Region: "cn-north-4", ProjectID: "p1"},
		Auth: kmsv1alpha1.ClusterKmsProviderAuth{WorkloadIdentity: &kmsv1alpha1.ClusterWorkloadIdentity{
			ServiceAccountRef: kmsv1alpha1.ClusterServiceAccountReference{
				ServiceAccountReference: kmsv1alpha1.ServiceAccountReference{Name: "kms", Audiences: []string{"a"}},
			},
			IdentityFederation: kmsv1alpha1.IdentityFederation{IdentityProviderID: "idp"},
		}},
	}}
	p.Name = "shared"
	got, err := resolve(p, Options{ClusterResourceNamespace: "kms-key-sync-system"})
	if err != nil || got.workload == nil || got.workload.serviceAccount.String() != "kms-key-sync-system/kms" {
		t.Fatalf("workload = %+v, %v; want the service account kms-key-sync-system/kms", got.workload, err)
	}
	src, err := identitySource(got, false)
	if err != nil {
		t.Fatal(err)
	}
	w, ok := src.(identity.WorkloadIdentity)
	if !ok || w.IAMEndpoint != "https://iam.cn-north-4.myhuaweicloud.com" || w.ProjectID != "p1" || w.Namespace != "kms-key-sync-system" {
		t.Errorf("source = %+v, want the region's IAM endpoint, the project and the namespace", src)
	}
	if _, err := resolve(p, Options{}); err == nil || !strings.Contains(err.Error(), `ClusterKmsProvider "shared" spec.auth.workloadIdentity.serviceAccountRef.namespace is not set`) {
		t.Errorf("no namespace anywhere: err = %v, want InvalidSpec naming the field", err)
	}
}

func TestWorkloadIdentityIAMEndpoint(t *testing.T) {
	at := func(region, endpoint, iam string) provider {
		return provider{
			location: kmsv1alpha1.KMSLocation{Region: region, Endpoint: endpoint, ProjectID: "p1"},
			specPath: "spec.provider", authPath: "spec.provider.workloadIdentity",
			workload: &workloadIdentity{iamEndpoint: iam},
		}
	}
	if _, err := identitySource(at("", "https://kms.example", ""), false); reasonOf(err) != kmsv1alpha1.ReasonInvalidSpec ||
		!strings.Contains(err.Error(), "spec.provider.workloadIdentity.iamEndpoint is not set") {
		t.Errorf("no region and no iamEndpoint: err = %v, want InvalidSpec naming iamEndpoint", err)
	}
	if _, err := identitySource(at("", "https://kms.example", "http://iam.example"), false); reasonOf(err) != kmsv1alpha1.ReasonInsecureEndpoint {
		t.Errorf("plain http IAM: err = %v, want InsecureEndpoint", err)
	}
	if _, err := identitySource(at("", "https://kms.example", "http://iam.example"), true); err != nil {
		t.Errorf("plain http IAM with --allow-insecure-endpoints: %v", err)
	}
	src, err := identitySource(at("eu-west-101", "", ""), false)
	if w, _ := src.(identity.WorkloadIdentity); err != nil || w.IAMEndpoint != "https://iam.eu-west-101.myhuaweicloud.eu" {
		t.Errorf("eu-west-101: %+v, %v", src, err)
	}
}

func TestNamespacedWorkloadIdentitySendsTokensToAllowedIAMHostsOnly(t *testing.T) {
	p := &kmsv1alpha1.KmsProvider{Spec: kmsv1alpha1.KmsProviderSpec{
		KMSLocation: kmsv1alpha1.KMSLocation{Region: "cn-north-4", ProjectID: "p1"},
		Auth: kmsv1alpha1.KmsProviderAuth{WorkloadIdentity: &kmsv1alpha1.WorkloadIdentity{
			ServiceAccountRef:  kmsv1alpha1.ServiceAccountReference{Name: "kms", Audiences: []string{"a"}},
			IdentityFederation: kmsv1alpha1.IdentityFederation{IdentityProviderID: "idp", IAMEndpoint: "https://collector.example"},
		}},
	}}
	p.Name, p.Namespace = "team", "team-ns"
	resolved, err := resolve(p, Options{AllowedIAMHosts: identity.DefaultIAMHosts})
	if err != nil {
		t.Fatal(err)
	}
	_, err = identitySource(resolved, false)
	if reasonOf(err) != kmsv1alpha1.ReasonInvalidSpec || !strings.Contains(err.Error(), `iamEndpoint "https://collector.example" is not an IAM host`) ||
		!strings.Contains(err.Error(), "--allowed-iam-hosts") {
		t.Errorf("a KmsProvider's token sent to another host: err = %v, want InvalidSpec naming the flag", err)
	}
	p.Spec.Auth.WorkloadIdentity.IAMEndpoint = ""
	resolved, _ = resolve(p, Options{AllowedIAMHosts: identity.DefaultIAMHosts})
	if _, err := identitySource(resolved, false); err != nil {
		t.Errorf("the region's IAM endpoint: %v", err)
	}
}
