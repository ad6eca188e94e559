package iamtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth/signer"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/request"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// testStart is when a test's fake clock starts.
var testStart = time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)

// Test keys, generated once per test binary.
var (
	testRSAKey = sync.OnceValue(func() *rsa.PrivateKey { return mustRSAKey() })
	testECKey  = sync.OnceValue(func() *ecdsa.PrivateKey { return mustECKey() })
	otherRSA   = sync.OnceValue(func() *rsa.PrivateKey { return mustRSAKey() })
)

func mustRSAKey() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
}

func mustECKey() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func rsaJWK(kid string, pub *rsa.PublicKey) map[string]any {
	return map[string]any{
		"kty": "RSA", "kid": kid, "use": "sig", "alg": AlgRS256,
		"n": b64(pub.N.Bytes()), "e": b64(big.NewInt(int64(pub.E)).Bytes()),
	}
}

func ecJWK(kid string, pub *ecdsa.PublicKey) map[string]any {
	b, err := pub.Bytes()
	if err != nil {
		panic(err)
	}
	return map[string]any{"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(b[1:33]), "y": b64(b[33:])}
}

func jwks(keys ...map[string]any) []byte {
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		panic(err)
	}
	return b
}

// makeJWT builds a compact JWS; sign signs the signing input (nil: an empty signature).
func makeJWT(header, claims map[string]any, sign func([]byte) []byte) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	input := b64(h) + "." + b64(c)
	var sig []byte
	if sign != nil {
		sig = sign([]byte(input))
	}
	return input + "." + b64(sig)
}

func signRS256(k *rsa.PrivateKey) func([]byte) []byte {
	return func(input []byte) []byte {
		d := sha256.Sum256(input)
		sig, err := rsa.SignPKCS1v15(nil, k, crypto.SHA256, d[:])
		if err != nil {
			panic(err)
		}
		return sig
	}
}

func signES256(k *ecdsa.PrivateKey) func([]byte) []byte {
	return func(input []byte) []byte {
		d := sha256.Sum256(input)
		r, s, err := ecdsa.Sign(rand.Reader, k, d[:])
		if err != nil {
			panic(err)
		}
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		return sig
	}
}

const (
	testIdP      = "idp-cce"
	testIssuer   = "https://kubernetes.default.svc.cluster.local"
	testClientID = "kms-key-sync"
	testSubject  = "system:serviceaccount:kms-key-sync:controller"
	otherProject = "9f8e7d6c5b4a49382716a5b4c3d2e1f0"
)

// iamFixture is an IAM trusted by two KMS emulators (kmstest.DefaultProjectID and otherProject)
// sharing a fake clock, with one identity provider (RSA kid "rsa1", EC kid "ec1") and a rule
// letting testSubject into kmstest.DefaultProjectID.
type iamFixture struct {
	clock *clocktesting.FakeClock
	kms   *kmstest.Server
	other *kmstest.Server
	iam   *IAM
	srv   *httptest.Server
}

func newIAMFixture(t *testing.T, opts ...Option) *iamFixture {
	t.Helper()
	f := &iamFixture{clock: clocktesting.NewFakeClock(testStart)}
	f.kms = newKMS(t, kmstest.WithClock(f.clock.Now))
	f.other = newKMS(t, kmstest.WithClock(f.clock.Now), kmstest.WithProjectID(otherProject))
	f.iam = New(append([]Option{WithClock(f.clock.Now)}, opts...)...)
	f.iam.Trust(f.kms.Emulator, f.other.Emulator)
	err := f.iam.PutIdentityProvider(IdentityProvider{
		ID: testIdP, Issuer: testIssuer, ClientIDs: []string{"other-client", testClientID},
		SigningKey: jwks(rsaJWK("rsa1", &testRSAKey().PublicKey), ecJWK("ec1", &testECKey().PublicKey)),
	})
	if err != nil {
		t.Fatal(err)
	}
	f.iam.Allow(testIdP, testSubject, kmstest.DefaultProjectID)
	f.srv = NewServer(f.iam)
	t.Cleanup(f.srv.Close)
	return f
}

// claims returns valid claims at the fixture's time.
func (f *iamFixture) claims() map[string]any {
	now := f.clock.Now().Unix()
	return map[string]any{
		"iss": testIssuer, "sub": testSubject, "aud": []string{testClientID},
		"iat": now, "nbf": now, "exp": now + 600,
	}
}

// jwt signs claims with the RSA key (kid rsa1).
func (f *iamFixture) jwt(claims map[string]any) string {
	return makeJWT(map[string]any{"alg": AlgRS256, "kid": "rsa1", "typ": "JWT"}, claims, signRS256(testRSAKey()))
}

func idTokenBody(jwt, project string) string {
	if project == "" {
		return fmt.Sprintf(`{"auth":{"id_token":{"id":%q}}}`, jwt)
	}
	return fmt.Sprintf(`{"auth":{"id_token":{"id":%q},"scope":{"project":{"id":%q}}}}`, jwt, project)
}

// call sends a request to the IAM server.
func (f *iamFixture) call(t *testing.T, method, path, body string, header map[string]string) (int, http.Header, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.srv.URL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json;charset=UTF-8")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// exchange posts an id_token for project and returns the status, headers and body.
func (f *iamFixture) exchange(t *testing.T, jwt, project string) (int, http.Header, []byte) {
	t.Helper()
	return f.call(t, http.MethodPost, PathIDToken, idTokenBody(jwt, project), map[string]string{HeaderIdpID: testIdP})
}

// mustExchange exchanges a valid id_token for an IAM token of project.
func (f *iamFixture) mustExchange(t *testing.T, project string) string {
	t.Helper()
	status, h, body := f.exchange(t, f.jwt(f.claims()), project)
	if status != http.StatusCreated {
		t.Fatalf("exchange: %d %s", status, body)
	}
	return h.Get(HeaderSubjectToken)
}

// expiry parses the credential's expires_at.
func expiry(t *testing.T, c TemporaryCredential) time.Time {
	t.Helper()
	exp, err := time.Parse(TimeFormat, c.ExpiresAt)
	if err != nil {
		t.Fatalf("expires_at %q: %v", c.ExpiresAt, err)
	}
	return exp
}

// decodeCredential decodes {"<field>":{access, secret, securitytoken, expires_at}}.
func decodeCredential(t *testing.T, body []byte, field string) TemporaryCredential {
	t.Helper()
	var m map[string]TemporaryCredential
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	c, ok := m[field]
	if !ok || c.Access == "" || c.Secret == "" || c.SecurityToken == "" || c.ExpiresAt == "" {
		t.Fatalf("incomplete %q in %s", field, body)
	}
	expiry(t, c)
	return c
}

// wantCredential checks the 200 answer of route: a credential under field that lives for
// lifetime by the fixture's clock and that the KMS of kmstest.DefaultProjectID accepts.
func (f *iamFixture) wantCredential(t *testing.T, route string, status int, body []byte, field string, lifetime time.Duration) TemporaryCredential {
	t.Helper()
	if status != http.StatusOK {
		t.Fatalf("%s: %d %s", route, status, body)
	}
	c := decodeCredential(t, body, field)
	if expiry(t, c) != f.clock.Now().Add(lifetime) {
		t.Errorf("%s: expires_at %s, want %s from now", route, c.ExpiresAt, lifetime)
	}
	if status, body := kmsWithAKSK(t, f.kms, c, f.clock.Now()); status != http.StatusOK {
		t.Errorf("KMS with the credentials of %s: %d %s", route, status, body)
	}
	return c
}

// securityTokens exchanges an IAM token for AK/SK; duration 0 sends no duration_seconds.
func (f *iamFixture) securityTokens(t *testing.T, token string, duration int) (int, []byte) {
	t.Helper()
	d := ""
	if duration != 0 {
		d = fmt.Sprintf(`,"duration_seconds":%d`, duration)
	}
	body := fmt.Sprintf(`{"auth":{"identity":{"methods":["token"],"token":{"id":%q%s}}}}`, token, d)
	status, _, b := f.call(t, http.MethodPost, PathSecurityTokens, body, nil)
	return status, b
}

func (f *iamFixture) mustSecurityTokens(t *testing.T, token string, duration int) TemporaryCredential {
	t.Helper()
	status, body := f.securityTokens(t, token, duration)
	if status != http.StatusCreated {
		t.Fatalf("securitytokens: %d %s", status, body)
	}
	return decodeCredential(t, body, "credential")
}

// metadataToken gets a metadata session token.
func (f *iamFixture) metadataToken(t *testing.T, ttl string) (int, []byte) {
	t.Helper()
	status, _, body := f.call(t, http.MethodPut, PathMetadataToken, "", map[string]string{HeaderMetadataTokenTTL: ttl})
	return status, body
}

// samplePath is the seed file of hack/kms-emulator: eight keys.
const samplePath = "../../../hack/kms-emulator/sample-keys.json"

// newKMS starts a KMS emulator holding the sample keys and closes it when the test ends.
func newKMS(t *testing.T, opts ...kmstest.Option) *kmstest.Server {
	t.Helper()
	srv := kmstest.NewServer(opts...)
	t.Cleanup(srv.Close)
	if err := srv.LoadKeysFile(samplePath); err != nil {
		t.Fatalf("load sample keys: %v", err)
	}
	return srv
}

// kmsCount sends a count request to the KMS emulator, with header set by auth, and returns the
// status and body.
func kmsCount(t *testing.T, srv *kmstest.Server, auth func(*request.DefaultHttpRequest) map[string]string) (int, []byte) {
	t.Helper()
	sreq := request.NewHttpRequestBuilder().
		WithEndpoint(srv.URL).
		WithPath(srv.ActionPath()).
		WithMethod(http.MethodPost).
		AddHeaderParam("Content-Type", "application/json;charset=UTF-8").
		WithBody("json", `{"action":"count"}`).
		Build()
	extra := auth(sreq)
	req, err := http.NewRequest(http.MethodPost, srv.ActionURL(), strings.NewReader(`{"action":"count"}`))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range sreq.GetHeaderParams() {
		req.Header.Set(k, v)
	}
	for k, v := range extra {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("KMS request: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// kmsWithToken counts keys with an X-Auth-Token and returns the status and body.
func kmsWithToken(t *testing.T, srv *kmstest.Server, token string) (int, []byte) {
	t.Helper()
	return kmsCount(t, srv, func(*request.DefaultHttpRequest) map[string]string {
		return map[string]string{kmstest.HeaderAuthToken: token}
	})
}

// kmsWithAKSK counts keys signing with temporary credentials, dated now (the KMS emulator checks
// X-Sdk-Date against its own clock).
func kmsWithAKSK(t *testing.T, srv *kmstest.Server, c TemporaryCredential, now time.Time) (int, []byte) {
	t.Helper()
	return kmsCount(t, srv, func(r *request.DefaultHttpRequest) map[string]string {
		r.AddHeaderParam(kmstest.HeaderSdkDate, now.UTC().Format(signer.BasicDateFormat))
		r.AddHeaderParam(kmstest.HeaderSecurityToken, c.SecurityToken)
		headers, err := signer.Sign(r, c.Access, c.Secret)
		if err != nil {
			t.Fatalf("sign: %v", err)
		}
		return headers
	})
}

// errorOf decodes a KMS error body.
func errorOf(t *testing.T, body []byte) kmstest.ErrorDetail {
	t.Helper()
	var e kmstest.ErrorBody
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("not a KMS error body: %s: %v", body, err)
	}
	return e.Error
}

// iamErrorOf decodes an IAM error body.
func iamErrorOf(t *testing.T, body []byte) iamErrorBody {
	t.Helper()
	var e iamErrorBody
	if err := json.Unmarshal(body, &e); err != nil || e.Code == "" || e.Message == "" {
		t.Fatalf("not an IAM error body: %s", body)
	}
	return e
}

// wantIAMError asserts an IAM error answer.
func wantIAMError(t *testing.T, status int, body []byte, wantStatus int, wantCode string) iamErrorBody {
	t.Helper()
	if status != wantStatus {
		t.Fatalf("status %d, body %s; want %d %s", status, body, wantStatus, wantCode)
	}
	e := iamErrorOf(t, body)
	if e.Code != wantCode {
		t.Fatalf("code %s (%s), want %s", e.Code, e.Message, wantCode)
	}
	return e
}

// assertNoSecrets fails when body holds one of the secrets.
func assertNoSecrets(t *testing.T, body []byte, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(string(body), s) {
			t.Errorf("body holds a secret %.12q...: %s", s, body)
		}
	}
}
