package identity

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/iamtest"
)

const (
	testIssuer   = "https://issuer.example"
	testIdP      = "idp-1"
	testAudience = "kms-key-sync"
)

// signer stands in for the API server: it signs service account tokens with its own key and
// records what it was asked for.
type signer struct {
	t         *testing.T
	key       *rsa.PrivateKey
	audiences []string
	lifetime  time.Duration
	issued    []string
}

func newSigner(t *testing.T) *signer {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{t: t, key: key}
}

func (s *signer) jwks() []byte {
	b64 := base64.RawURLEncoding.EncodeToString
	out, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "k1",
		"n": b64(s.key.N.Bytes()), "e": b64(big.NewInt(int64(s.key.E)).Bytes()),
	}}})
	return out
}

func (s *signer) ServiceAccountToken(_ context.Context, namespace, name string, audiences []string, lifetime time.Duration) (string, error) {
	s.audiences, s.lifetime = audiences, lifetime
	now := time.Now()
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signing := enc(map[string]string{"alg": "RS256", "kid": "k1", "typ": "JWT"}) + "." + enc(map[string]any{
		"iss": testIssuer, "sub": "system:serviceaccount:" + namespace + ":" + name, "aud": audiences,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(lifetime).Unix(),
	})
	digest := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, digest[:])
	if err != nil {
		return "", err
	}
	jwt := signing + "." + base64.RawURLEncoding.EncodeToString(sig)
	s.issued = append(s.issued, jwt)
	return jwt, nil
}

// world is an IAM emulator trusting the signer, a KMS emulator trusting the IAM, and a broker.
type world struct {
	iam    *iamtest.IAM
	kms    *kmstest.Server
	signer *signer
	broker *Broker
	url    string
}

func newWorld(t *testing.T) *world {
	s := newSigner(t)
	iam := iamtest.New()
	if err := iam.PutIdentityProvider(iamtest.IdentityProvider{ID: testIdP, Issuer: testIssuer, ClientIDs: []string{testAudience}, SigningKey: s.jwks()}); err != nil {
		t.Fatal(err)
	}
	k := kmstest.NewServer(kmstest.WithKeys(kmstest.GenerateKeys(2, map[string]string{"env": "prod"})...))
	t.Cleanup(k.Close)
	iam.Trust(k.Emulator)
	srv := httptest.NewServer(iam.Handler())
	t.Cleanup(srv.Close)
	return &world{iam: iam, kms: k, signer: s, url: srv.URL, broker: &Broker{
		HTTP: srv.Client(), Metadata: srv.Client(), MetadataEndpoint: srv.URL,
		PodIdentityURI: srv.URL + iamtest.PathPodIdentity, Tokens: s, Now: time.Now,
	}}
}

func (w *world) identity(sa string) WorkloadIdentity {
	return WorkloadIdentity{
		Namespace: "team", ServiceAccount: sa, Audiences: []string{testAudience},
		IdentityProviderID: testIdP, IAMEndpoint: w.url, ProjectID: w.kms.ProjectID(),
	}
}

// list lists the KMS emulator's keys with the credentials.
func (w *world) list(t *testing.T, creds kms.Credentials) int {
	t.Helper()
	c, err := kms.New(kms.Config{Endpoint: w.kms.URL, ProjectID: w.kms.ProjectID(), Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := c.ListKeys(context.Background(), kms.Filter{})
	if err != nil {
		t.Fatalf("listing with the credentials: %v", err)
	}
	return len(keys)
}

// secretFree fails when the error's text holds any of the secrets.
func secretFree(t *testing.T, err error, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("error %q holds a secret", err)
		}
	}
}

func TestWorkloadIdentityExchangesAServiceAccountTokenForSigningKeys(t *testing.T) {
	w := newWorld(t)
	id := w.identity("reader")
	w.iam.Allow(testIdP, "system:serviceaccount:team:reader", w.kms.ProjectID())

	creds, err := w.broker.Credentials(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if creds.Token != "" || creds.AccessKey == "" || creds.SecurityToken == "" {
		t.Fatalf("credentials = %v, want temporary AK/SK with a security token and no bearer token", creds)
	}
	if n := w.list(t, creds); n != 2 {
		t.Errorf("listed %d keys, want 2", n)
	}
	if w.signer.lifetime != ServiceAccountTokenLifetime || w.signer.lifetime > time.Hour {
		t.Errorf("token lifetime asked = %s, want %s", w.signer.lifetime, ServiceAccountTokenLifetime)
	}
	if strings.Join(w.signer.audiences, ",") != testAudience {
		t.Errorf("token audiences = %v, want exactly the configured %q", w.signer.audiences, testAudience)
	}
	st := w.iam.Stats()
	if st.IDTokenExchanges != 1 || st.SecurityTokens != 1 {
		t.Errorf("stats = %+v, want 1 exchange and 1 securitytokens call", st)
	}
}

func TestRefusedExchangesNameWhatToCheckAndNoSecret(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*world, *WorkloadIdentity)
		want   []string
	}{
		{"no conversion rule", func(*world, *WorkloadIdentity) {},
			[]string{"IAM id-token exchange answered 403", "conversion rule", "system:serviceaccount:team:reader", "project"}},
		{"wrong audience", func(w *world, id *WorkloadIdentity) {
			w.iam.Allow(testIdP, "system:serviceaccount:team:reader", w.kms.ProjectID())
			id.Audiences = []string{"other"}
		}, []string{"answered 401", "client ID is one of the audiences other"}},
		{"unknown identity provider", func(w *world, id *WorkloadIdentity) { id.IdentityProviderID = "nope" },
			[]string{"answered 404", `identityProviderId "nope"`}},
		{"IAM unavailable", func(w *world, id *WorkloadIdentity) {
			w.iam.Allow(testIdP, "system:serviceaccount:team:reader", w.kms.ProjectID())
			w.iam.InjectFault(iamtest.Fault{Route: iamtest.RouteIDToken, Status: 503})
		}, []string{"answered 503", "IAM is unavailable"}},
		{"securitytokens unavailable", func(w *world, id *WorkloadIdentity) {
			w.iam.Allow(testIdP, "system:serviceaccount:team:reader", w.kms.ProjectID())
			w.iam.InjectFault(iamtest.Fault{Route: iamtest.RouteSecurityTokens, Status: 500})
		}, []string{"IAM securitytokens answered 500"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			id := w.identity("reader")
			tc.mutate(w, &id)
			_, err := w.broker.Credentials(context.Background(), id)
			if err == nil {
				t.Fatal("no error")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			secretFree(t, err, w.signer.issued...)
		})
	}
}

func TestNodeAgencyTakesTheMetadataServicesKeysAndNamesANodeWithoutAgency(t *testing.T) {
	w := newWorld(t)
	w.iam.SetNodeAgency(w.kms.ProjectID())
	creds, err := w.broker.Credentials(context.Background(), NodeAgency{})
	if err != nil {
		t.Fatal(err)
	}
	if n := w.list(t, creds); n != 2 {
		t.Errorf("listed %d keys, want 2", n)
	}

	w2 := newWorld(t)
	_, err = w2.broker.Credentials(context.Background(), NodeAgency{})
	if err == nil || !strings.Contains(err.Error(), "the node has no IAM agency") || !strings.Contains(err.Error(), "401") {
		t.Errorf("err = %v, want a 401 saying the node has no IAM agency", err)
	}

	w2.iam.InjectFault(iamtest.Fault{Route: iamtest.RouteMetadata, Status: 503})
	if _, err := w2.broker.Credentials(context.Background(), NodeAgency{}); err == nil || !strings.Contains(err.Error(), "metadata token answered 503") {
		t.Errorf("err = %v, want the metadata token's 503", err)
	}
}

func TestPodIdentityRereadsItsTokenFile(t *testing.T) {
	w := newWorld(t)
	b := w.broker
	if _, err := b.Credentials(context.Background(), PodIdentity{}); err == nil || !strings.Contains(err.Error(), PodIdentityURIEnv) {
		t.Errorf("without a token file: err = %v, want it to name %s", err, PodIdentityURIEnv)
	}
	b.PodIdentityTokenFile = filepath.Join(t.TempDir(), "token")
	b.AllowInsecureEndpoints = true // the emulator serves plain http
	if err := os.WriteFile(b.PodIdentityTokenFile, []byte("wrong-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.iam.SetPodIdentity("right-token", w.kms.ProjectID())
	_, err := b.Credentials(context.Background(), PodIdentity{})
	if err == nil || !strings.Contains(err.Error(), "pod identity endpoint answered 401") {
		t.Fatalf("err = %v, want the endpoint's 401", err)
	}
	secretFree(t, err, "wrong-token", "right-token")

	if err := os.WriteFile(b.PodIdentityTokenFile, []byte("right-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	creds, err := b.Credentials(context.Background(), PodIdentity{})
	if err != nil {
		t.Fatal(err)
	}
	if n := w.list(t, creds); n != 2 {
		t.Errorf("listed %d keys, want 2", n)
	}
}

func TestIAMEndpointForRegion(t *testing.T) {
	for region, want := range map[string]string{
		"cn-north-4":  "https://iam.cn-north-4.myhuaweicloud.com",
		"eu-west-101": "https://iam.eu-west-101.myhuaweicloud.eu",
	} {
		if got, err := IAMEndpointForRegion(region); err != nil || got != want {
			t.Errorf("IAMEndpointForRegion(%q) = %q, %v; want %q", region, got, err, want)
		}
	}
	if _, err := IAMEndpointForRegion("Bad Region"); err == nil {
		t.Error("a malformed region gave an endpoint")
	}
}
