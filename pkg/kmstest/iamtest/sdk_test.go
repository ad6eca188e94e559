package iamtest

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth/provider"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/config"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/impl"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/request"

	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// sdkCount counts the emulator's keys through the vendor SDK's HTTP client, authenticated by
// cred (which fetches its temporary credentials from IAM first).
func sdkCount(t *testing.T, client *impl.DefaultHttpClient, kms *kmstest.Server, cred auth.ICredential) (int, string) {
	t.Helper()
	req := request.NewHttpRequestBuilder().
		WithEndpoint(kms.URL).
		WithPath("/v1.0/{project_id}/kms/resource_instances/action").
		WithMethod(http.MethodPost).
		WithSigningAlgorithm(client.GetHttpConfig().SigningAlgorithm).
		AddHeaderParam("Content-Type", "application/json;charset=UTF-8").
		WithBody("body", map[string]string{"action": kmstest.ActionCount}).
		Build()
	req, err := cred.ProcessAuthRequest(client, req)
	if err != nil {
		t.Fatalf("ProcessAuthRequest: %v", err)
	}
	resp, err := client.SyncInvokeHttp(req)
	if err != nil {
		t.Fatalf("KMS request: %v", err)
	}
	body, err := resp.GetBodyAsBytes()
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetStatusCode(), string(body)
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSDKFederalAccessor runs the SDK's OIDC flow (an unscoped id-token exchange, then
// securitytokens) against IAM and signs a KMS request with what it got.
func TestSDKFederalAccessor(t *testing.T) {
	kms := newKMS(t)
	iam := New()
	iam.Trust(kms.Emulator)
	if err := iam.PutIdentityProvider(IdentityProvider{
		ID: testIdP, Issuer: testIssuer, ClientIDs: []string{testClientID},
		SigningKey: jwks(ecJWK("ec1", &testECKey().PublicKey)),
	}); err != nil {
		t.Fatal(err)
	}
	iam.Allow(testIdP, testSubject, kmstest.DefaultProjectID)
	iamSrv := NewTLSServer(iam)
	t.Cleanup(iamSrv.Close)

	now := time.Now().Unix()
	jwt := makeJWT(map[string]any{"alg": AlgES256, "kid": "ec1"}, map[string]any{
		"iss": testIssuer, "sub": testSubject, "aud": testClientID, "iat": now, "exp": now + 600,
	}, signES256(testECKey()))
	cred, err := auth.NewBasicCredentialsBuilder().
		WithIdpId(testIdP).
		WithIdTokenFile(writeFile(t, jwt)).
		WithProjectId(kmstest.DefaultProjectID).
		WithIamEndpointOverride(iamSrv.URL).
		SafeBuild()
	if err != nil {
		t.Fatal(err)
	}
	client := impl.NewDefaultHttpClient(config.DefaultHttpConfig().WithIgnoreSSLVerification(true))
	if status, body := sdkCount(t, client, kms, cred); status != http.StatusOK || body != `{"total_count":8}` {
		t.Errorf("KMS: %d %s", status, body)
	}
	if st := iam.Stats(); st.IDTokenExchanges != 1 || st.SecurityTokens != 1 || st.Refusals != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestSDKPodIdentityProvider runs the SDK's pod identity provider against IAM.
func TestSDKPodIdentityProvider(t *testing.T) {
	kms := newKMS(t)
	iam := New()
	iam.Trust(kms.Emulator)
	iam.SetPodIdentity("pod-token", kmstest.DefaultProjectID)
	iamSrv := NewServer(iam)
	t.Cleanup(iamSrv.Close)
	t.Setenv("HC_CONTAINER_CREDENTIALS_FULL_URI", iamSrv.URL+PathPodIdentity)
	t.Setenv("HC_CONTAINER_AUTHORIZATION_TOKEN_FILE", writeFile(t, "pod-token"))

	cred, err := provider.BasicCredentialPodIdentityProvider().GetCredentials()
	if err != nil {
		t.Fatal(err)
	}
	basic, ok := cred.(*auth.BasicCredentials)
	if !ok {
		t.Fatalf("credentials %T", cred)
	}
	basic.ProjectId = kmstest.DefaultProjectID
	client := impl.NewDefaultHttpClient(config.DefaultHttpConfig())
	if status, body := sdkCount(t, client, kms, basic); status != http.StatusOK || body != `{"total_count":8}` {
		t.Errorf("KMS: %d %s", status, body)
	}
	if st := iam.Stats(); st.PodIdentityCredentials < 1 || st.Refusals != 0 {
		t.Errorf("stats %+v", st)
	}
}
