package iamtest

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

func TestPutIdentityProviderValidation(t *testing.T) {
	good := IdentityProvider{ID: "p1", Issuer: "https://issuer", ClientIDs: []string{"c"}, SigningKey: jwks(rsaJWK("k", &testRSAKey().PublicKey))}
	with := func(change func(*IdentityProvider)) IdentityProvider {
		p := good
		change(&p)
		return p
	}
	rsaKey := func(change func(map[string]any)) []byte {
		k := rsaJWK("k", &testRSAKey().PublicKey)
		change(k)
		return jwks(k)
	}
	ecKey := func(change func(map[string]any)) []byte {
		k := ecJWK("e", &testECKey().PublicKey)
		change(k)
		return jwks(k)
	}
	tests := []struct {
		name string
		p    IdentityProvider
		msg  string // "" = valid
	}{
		{"valid RSA", good, ""},
		{"valid EC", with(func(p *IdentityProvider) { p.SigningKey = jwks(ecJWK("e", &testECKey().PublicKey)) }), ""},
		{"no id", with(func(p *IdentityProvider) { p.ID = " " }), "id is empty"},
		{"no issuer", with(func(p *IdentityProvider) { p.Issuer = "" }), "issuer is empty"},
		{"no client IDs", with(func(p *IdentityProvider) { p.ClientIDs = nil }), "client_ids is empty"},
		{"empty client ID", with(func(p *IdentityProvider) { p.ClientIDs = []string{"c", ""} }), "empty client ID"},
		{"no signing key", with(func(p *IdentityProvider) { p.SigningKey = nil }), "signing key is empty"},
		{"not JSON", with(func(p *IdentityProvider) { p.SigningKey = []byte("-----BEGIN PUBLIC KEY-----") }), "not a JWKS document"},
		{"no keys", with(func(p *IdentityProvider) { p.SigningKey = []byte(`{"keys":[]}`) }), "has no keys"},
		{"symmetric key", with(func(p *IdentityProvider) { p.SigningKey = []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`) }), `kty "oct"`},
		{"no kty", with(func(p *IdentityProvider) { p.SigningKey = []byte(`{"keys":[{"n":"x"}]}`) }), "kty is missing"},
		{"encryption key", with(func(p *IdentityProvider) { p.SigningKey = rsaKey(func(k map[string]any) { k["use"] = "enc" }) }), `use is "enc"`},
		{"RSA with alg RS512", with(func(p *IdentityProvider) { p.SigningKey = rsaKey(func(k map[string]any) { k["alg"] = "RS512" }) }), `alg "RS512"`},
		{"RSA without n", with(func(p *IdentityProvider) { p.SigningKey = rsaKey(func(k map[string]any) { delete(k, "n") }) }), "n is missing"},
		{"RSA n not base64url", with(func(p *IdentityProvider) { p.SigningKey = rsaKey(func(k map[string]any) { k["n"] = "a+b/" }) }), "n is not base64url"},
		{"RSA small modulus", with(func(p *IdentityProvider) {
			p.SigningKey = rsaKey(func(k map[string]any) { k["n"] = b64(make([]byte, 64)) })
		}), "at least 1024"},
		{"RSA even exponent", with(func(p *IdentityProvider) { p.SigningKey = rsaKey(func(k map[string]any) { k["e"] = b64([]byte{2}) }) }), "exponent"},
		{"EC P-384", with(func(p *IdentityProvider) { p.SigningKey = ecKey(func(k map[string]any) { k["crv"] = "P-384" }) }), `crv "P-384"`},
		{"EC short x", with(func(p *IdentityProvider) { p.SigningKey = ecKey(func(k map[string]any) { k["x"] = b64([]byte{1}) }) }), "32 bytes"},
		{"EC point off the curve", with(func(p *IdentityProvider) {
			p.SigningKey = ecKey(func(k map[string]any) { k["y"] = b64(make([]byte, 32)) })
		}), "not a point"},
		{"EC with alg RS256", with(func(p *IdentityProvider) { p.SigningKey = ecKey(func(k map[string]any) { k["alg"] = AlgRS256 }) }), "EC key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := New().PutIdentityProvider(tt.p)
			switch {
			case tt.msg == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.msg != "" && err == nil:
				t.Fatal("accepted")
			case tt.msg != "" && !strings.Contains(err.Error(), tt.msg):
				t.Errorf("error %q does not contain %q", err, tt.msg)
			}
		})
	}
}

func TestIdentityProviderJSON(t *testing.T) {
	doc := jwks(ecJWK("e", &testECKey().PublicKey))
	p := IdentityProvider{ID: "p1", Issuer: "https://issuer", ClientIDs: []string{"c"}, SigningKey: doc}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if s, ok := raw["signing_key"].(string); !ok || s != string(doc) {
		t.Fatalf("signing_key is not the JWKS as a string: %s", b)
	}
	for _, in := range []string{
		string(b),
		`{"id":"p1","issuer":"https://issuer","client_ids":["c"],"signing_key":` + string(doc) + `}`,
		`{"id":"p1","issuer":"https://issuer","client_ids":["c"],"signing_key":"` + stdB64(doc) + `"}`,
	} {
		var got IdentityProvider
		if err := json.Unmarshal([]byte(in), &got); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got.ID != p.ID || got.Issuer != p.Issuer || !slices.Equal(got.ClientIDs, p.ClientIDs) || string(got.SigningKey) != string(doc) {
			t.Errorf("%s decoded to %+v", in, got)
		}
	}
	var got IdentityProvider
	if err := json.Unmarshal([]byte(`{"id":"p1","jwks_uri":"x"}`), &got); err == nil {
		t.Error("unknown field accepted")
	}
}

func stdB64(b []byte) string {
	out, _ := json.Marshal(b) // encoding/json writes []byte in standard base64
	return strings.Trim(string(out), `"`)
}

func TestIAMAdminAPI(t *testing.T) {
	f := newIAMFixture(t)
	f.iam.Revoke(testIdP, testSubject)
	f.iam.DeleteIdentityProvider(testIdP)
	admin := func(method, path, body string) (int, []byte) {
		t.Helper()
		status, _, b := f.call(t, method, AdminPrefix+path, body, nil)
		return status, b
	}
	want := func(status int, body []byte, wantStatus int) {
		t.Helper()
		if status != wantStatus {
			t.Fatalf("status %d, body %s; want %d", status, body, wantStatus)
		}
	}

	// Identity providers: signing_key as a string holding the JWKS.
	doc := string(jwks(rsaJWK("rsa1", &testRSAKey().PublicKey)))
	idp, _ := json.Marshal(map[string]any{"id": testIdP, "issuer": testIssuer, "client_ids": []string{testClientID}, "signing_key": doc})
	status, body := admin(http.MethodPut, "identity-providers", string(idp))
	want(status, body, http.StatusNoContent)
	status, body = admin(http.MethodPut, "identity-providers", `{"id":"bad","issuer":"i","client_ids":["c"],"signing_key":"{\"keys\":[]}"}`)
	want(status, body, http.StatusBadRequest)
	if !strings.Contains(string(body), "no keys") {
		t.Errorf("error %s", body)
	}
	status, body = admin(http.MethodGet, "identity-providers", "")
	want(status, body, http.StatusOK)
	var idps []IdentityProvider
	if err := json.Unmarshal(body, &idps); err != nil || len(idps) != 1 || idps[0].ID != testIdP || string(idps[0].SigningKey) != doc {
		t.Fatalf("identity providers %s (%v)", body, err)
	}

	// Rules.
	status, body = admin(http.MethodPut, "rules", `{"idp":"`+testIdP+`","subject":"`+testSubject+`","projects":["`+kmstest.DefaultProjectID+`"]}`)
	want(status, body, http.StatusNoContent)
	status, body = admin(http.MethodPut, "rules", `{"idp":"","subject":"s"}`)
	want(status, body, http.StatusBadRequest)
	status, body = admin(http.MethodGet, "rules", "")
	want(status, body, http.StatusOK)
	var rules []Rule
	if err := json.Unmarshal(body, &rules); err != nil || len(rules) != 1 || rules[0].Subject != testSubject {
		t.Fatalf("rules %s", body)
	}
	token := f.mustExchange(t, kmstest.DefaultProjectID)
	if status, body := kmsWithToken(t, f.kms, token); status != http.StatusOK {
		t.Errorf("KMS: %d %s", status, body)
	}
	status, body = admin(http.MethodDelete, "rules", `{"idp":"`+testIdP+`","subject":"`+testSubject+`"}`)
	want(status, body, http.StatusNoContent)
	status, _, body = f.exchange(t, f.jwt(f.claims()), kmstest.DefaultProjectID)
	wantIAMError(t, status, body, http.StatusForbidden, CodeNoRule)

	// Node agency and pod identity.
	status, body = admin(http.MethodPut, "node-agency", `{"projects":["`+kmstest.DefaultProjectID+`"]}`)
	want(status, body, http.StatusNoContent)
	status, body = admin(http.MethodGet, "node-agency", "")
	want(status, body, http.StatusOK)
	if !strings.Contains(string(body), kmstest.DefaultProjectID) {
		t.Errorf("node agency %s", body)
	}
	status, body = admin(http.MethodPut, "pod-identity", `{"token":"pod-tok","projects":["`+kmstest.DefaultProjectID+`"]}`)
	want(status, body, http.StatusNoContent)
	status, _, body = f.call(t, http.MethodPost, PathPodIdentity, "{}", map[string]string{"Authorization": "pod-tok"})
	want(status, body, http.StatusOK)

	// Lifetime.
	status, body = admin(http.MethodPut, "lifetime", `{"seconds":120}`)
	want(status, body, http.StatusNoContent)
	status, body = admin(http.MethodPut, "lifetime", `{"seconds":0}`)
	want(status, body, http.StatusBadRequest)
	status, body = admin(http.MethodGet, "lifetime", "")
	want(status, body, http.StatusOK)
	if f.iam.CredentialLifetime() != 2*time.Minute || !strings.Contains(string(body), `"seconds": 120`) {
		t.Errorf("lifetime %s", body)
	}

	// Faults.
	status, body = admin(http.MethodPost, "faults", `{"route":"id-token","status":503,"count":1}`)
	want(status, body, http.StatusOK)
	status, body = admin(http.MethodPost, "faults", `[{"route":"metadata","status":500},{"route":"pod-identity"}]`)
	want(status, body, http.StatusOK)
	var faults []Fault
	if err := json.Unmarshal(body, &faults); err != nil || len(faults) != 3 || faults[2].Status != 500 {
		t.Fatalf("faults %s", body)
	}
	for _, bad := range []string{`{"route":"x"}`, `{"route":"metadata","status":200}`, `{"route":"metadata","count":-1}`, `{"route":`} {
		status, body = admin(http.MethodPost, "faults", bad)
		want(status, body, http.StatusBadRequest)
	}
	status, _, body = f.exchange(t, f.jwt(f.claims()), kmstest.DefaultProjectID)
	wantIAMError(t, status, body, http.StatusServiceUnavailable, "IAM.0503")
	status, body = admin(http.MethodDelete, "faults", "")
	want(status, body, http.StatusNoContent)
	status, body = admin(http.MethodGet, "faults", "")
	want(status, body, http.StatusOK)
	if strings.TrimSpace(string(body)) != "[]" {
		t.Errorf("faults after DELETE %s", body)
	}

	// Stats.
	status, body = admin(http.MethodGet, "stats", "")
	want(status, body, http.StatusOK)
	var st Stats
	if err := json.Unmarshal(body, &st); err != nil || st != f.iam.Stats() || st.IDTokenExchanges != 1 || st.PodIdentityCredentials != 1 {
		t.Errorf("stats %s", body)
	}
	status, body = admin(http.MethodPost, "reset-stats", "")
	want(status, body, http.StatusNoContent)
	if f.iam.Stats() != (Stats{}) {
		t.Error("stats not reset")
	}

	// Deleting an identity provider; unknown routes.
	status, body = admin(http.MethodDelete, "identity-providers/"+testIdP, "")
	want(status, body, http.StatusNoContent)
	status, body = admin(http.MethodDelete, "identity-providers/"+testIdP, "")
	want(status, body, http.StatusNotFound)
	status, body = admin(http.MethodGet, "nothing", "")
	want(status, body, http.StatusNotFound)
}
