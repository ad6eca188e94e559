package testkit

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"

	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/iamtest"
)

// ClusterIssuer reads the cluster's service account issuer and the JWKS its tokens are signed
// with, as an IAM OIDC identity provider is configured with them (kubectl get --raw
// /.well-known/openid-configuration and /openid/v1/jwks).
func ClusterIssuer(ctx context.Context, cfg *rest.Config) (issuer string, jwks []byte, err error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", nil, fmt.Errorf("creating a clientset: %w", err)
	}
	raw, err := cs.RESTClient().Get().AbsPath("/.well-known/openid-configuration").DoRaw(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("reading the OIDC discovery document: %w", err)
	}
	var discovery struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(raw, &discovery); err != nil || discovery.Issuer == "" {
		return "", nil, fmt.Errorf("the OIDC discovery document names no issuer: %s", raw)
	}
	jwks, err = cs.RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("reading the cluster's JWKS: %w", err)
	}
	return discovery.Issuer, jwks, nil
}

// The IAM identity provider that StartIAM registers, and the client ID it expects in the
// tokens' audience.
const (
	IdentityProviderID = "k8s-envtest"
	TokenAudience      = "kms-key-sync"
)

// StartIAM starts an IAM emulator over TLS, with the certificate of every emulator. Its identity
// provider IdentityProviderID trusts the cluster's service account issuer and signing keys, and
// the KMS emulators accept the credentials it issues for their projects. Close the server when
// done.
func StartIAM(ctx context.Context, cfg *rest.Config, trusted ...*kmstest.Server) (*iamtest.IAM, *httptest.Server, error) {
	return StartIAMWith(ctx, cfg, nil, trusted...)
}

// StartIAMWith is StartIAM with options for the emulated IAM, such as its clock.
func StartIAMWith(ctx context.Context, cfg *rest.Config, opts []iamtest.Option, trusted ...*kmstest.Server) (*iamtest.IAM, *httptest.Server, error) {
	issuer, jwks, err := ClusterIssuer(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	iam := iamtest.New(opts...)
	if err := iam.PutIdentityProvider(iamtest.IdentityProvider{
		ID: IdentityProviderID, Issuer: issuer, ClientIDs: []string{TokenAudience}, SigningKey: jwks,
	}); err != nil {
		return nil, nil, fmt.Errorf("registering the cluster as identity provider: %w", err)
	}
	for _, k := range trusted {
		iam.Trust(k.Emulator)
	}
	return iam, ServeTLS(iam.Handler()), nil
}

// ServiceAccountSubject is the OIDC subject of a service account's tokens.
func ServiceAccountSubject(namespace, name string) string {
	return "system:serviceaccount:" + namespace + ":" + name
}

// WorkloadIdentity acts as the service account through StartIAM's identity provider at iamURL.
func WorkloadIdentity(serviceAccount, iamURL string) *kmsv1alpha1.WorkloadIdentity {
	return &kmsv1alpha1.WorkloadIdentity{
		ServiceAccountRef:  kmsv1alpha1.ServiceAccountReference{Name: serviceAccount, Audiences: []string{TokenAudience}},
		IdentityFederation: kmsv1alpha1.IdentityFederation{IdentityProviderID: IdentityProviderID, IAMEndpoint: iamURL},
	}
}

// WithWorkloadIdentity makes a selector's inline provider act as the service account.
func WithWorkloadIdentity(serviceAccount, iamURL string) func(*kmsv1alpha1.KmsKeySelector) {
	return func(s *kmsv1alpha1.KmsKeySelector) {
		s.Spec.Provider.CredentialsSecretRef = nil
		s.Spec.Provider.WorkloadIdentity = WorkloadIdentity(serviceAccount, iamURL)
	}
}

// ServiceAccount creates a service account in the fixture's namespace. With audiences, it opts
// in to workload identity for them (kmsv1alpha1.WorkloadIdentityAudiencesAnnotation); without,
// the operator refuses to use it.
func (f *Fixture) ServiceAccount(name string, audiences ...string) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: f.Namespace, Name: name}}
	if len(audiences) > 0 {
		sa.Annotations = map[string]string{kmsv1alpha1.WorkloadIdentityAudiencesAnnotation: strings.Join(audiences, ",")}
	}
	f.g.Expect(f.Client.Create(context.Background(), sa)).WithOffset(1).To(gomega.Succeed())
}

// DeleteSecrets deletes the fixture namespace's Secrets, the credentials Secret it starts with
// among them.
func (f *Fixture) DeleteSecrets() {
	f.g.Expect(f.Client.DeleteAllOf(context.Background(), &corev1.Secret{}, client.InNamespace(f.Namespace))).WithOffset(1).To(gomega.Succeed())
}
