package iamtest

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

func TestIAMIDTokenExchange(t *testing.T) {
	tests := []struct {
		name string
		jwt  func(f *iamFixture) string
	}{
		{"RS256 with kid", func(f *iamFixture) string { return f.jwt(f.claims()) }},
		{"RS256 without kid", func(f *iamFixture) string {
			return makeJWT(map[string]any{"alg": AlgRS256}, f.claims(), signRS256(testRSAKey()))
		}},
		{"ES256 with kid and a string aud", func(f *iamFixture) string {
			c := f.claims()
			c["aud"] = testClientID
			return makeJWT(map[string]any{"alg": AlgES256, "kid": "ec1"}, c, signES256(testECKey()))
		}},
		{"kid not in the JWKS, a key without kid", func(f *iamFixture) string {
			if err := f.iam.PutIdentityProvider(IdentityProvider{
				ID: testIdP, Issuer: testIssuer, ClientIDs: []string{testClientID},
				SigningKey: jwks(rsaJWK("", &otherRSA().PublicKey), rsaJWK("", &testRSAKey().PublicKey)),
			}); err != nil {
				panic(err)
			}
			return f.jwt(f.claims())
		}},
		{"iat and nbf within the leeway", func(f *iamFixture) string {
			c := f.claims()
			c["iat"], c["nbf"] = f.clock.Now().Unix()+59, f.clock.Now().Unix()+59
			return f.jwt(c)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newIAMFixture(t)
			now := f.clock.Now()
			status, h, body := f.exchange(t, tt.jwt(f), kmstest.DefaultProjectID)
			if status != http.StatusCreated {
				t.Fatalf("status %d %s", status, body)
			}
			token := h.Get(HeaderSubjectToken)
			if token == "" || h.Get(HeaderRequestID) == "" {
				t.Fatalf("headers %v", h)
			}
			var info tokenInfo
			if err := json.Unmarshal(body, &info); err != nil {
				t.Fatal(err)
			}
			tok := info.Token
			if tok.ExpiresAt != now.Add(time.Hour).Format(TimeFormat) || tok.IssuedAt != now.Format(TimeFormat) ||
				strings.Join(tok.Methods, ",") != "mapped" || tok.Project == nil || tok.Project.ID != kmstest.DefaultProjectID ||
				tok.Project.Name != kmstest.DefaultProjectID || tok.User.Name != testSubject ||
				tok.User.Federation.IdentityProvider.ID != testIdP || tok.User.Federation.Protocol.ID != "oidc" {
				t.Errorf("token body %s", body)
			}
			if strings.Contains(string(body), token) {
				t.Error("the body holds the token")
			}
			if status, body := kmsWithToken(t, f.kms, token); status != http.StatusOK {
				t.Errorf("KMS with the IAM token: %d %s", status, body)
			}
			if status, body := kmsWithToken(t, f.other, token); status != http.StatusForbidden || errorOf(t, body).Code != kmstest.CodeTokenInvalid {
				t.Errorf("other project's KMS with the IAM token: %d %s", status, body)
			}

			c := f.mustSecurityTokens(t, token, 21600)
			if expiry(t, c) != now.Add(time.Hour) {
				t.Errorf("AK/SK expires_at %s, want the token's expiry", c.ExpiresAt)
			}
			if status, body := kmsWithAKSK(t, f.kms, c, now); status != http.StatusOK {
				t.Errorf("KMS with the AK/SK: %d %s", status, body)
			}
			if status, body := kmsWithAKSK(t, f.other, c, now); status != http.StatusForbidden {
				t.Errorf("other project's KMS with the AK/SK: %d %s", status, body)
			}
			if st := f.iam.Stats(); st.IDTokenExchanges != 1 || st.SecurityTokens != 1 || st.Refusals != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestIAMIDTokenRefusals(t *testing.T) {
	f := newIAMFixture(t)
	f.iam.Allow(testIdP, "system:serviceaccount:other:sa")
	with := func(change func(c map[string]any)) string {
		c := f.claims()
		change(c)
		return f.jwt(c)
	}
	now := f.clock.Now().Unix()
	good := f.jwt(f.claims())
	parts := strings.Split(good, ".")

	tests := []struct {
		name    string
		jwt     string
		project string
		idp     string // "" = testIdP; "-" = no header
		body    string // replaces the request body
		status  int
		code    string
		msg     string // a substring of the message
	}{
		{name: "tampered payload", jwt: parts[0] + "." + b64([]byte(`{"iss":"x"}`)) + "." + parts[2], status: 401, code: CodeBadSignature, msg: "does not verify"},
		{name: "tampered signature", jwt: parts[0] + "." + parts[1] + "." + b64([]byte("garbage-signature")), status: 401, code: CodeBadSignature},
		{name: "signed by another key", jwt: makeJWT(map[string]any{"alg": AlgRS256, "kid": "rsa1"}, f.claims(), signRS256(otherRSA())), status: 401, code: CodeBadSignature},
		{name: "unknown kid", jwt: makeJWT(map[string]any{"alg": AlgRS256, "kid": "rsa9"}, f.claims(), signRS256(testRSAKey())), status: 401, code: CodeBadSignature, msg: `kid "rsa9"`},
		{name: "ES256 header on an RSA kid", jwt: makeJWT(map[string]any{"alg": AlgES256, "kid": "rsa1"}, f.claims(), signES256(testECKey())), status: 401, code: CodeBadSignature},
		{name: "alg none", jwt: makeJWT(map[string]any{"alg": "none"}, f.claims(), nil), status: 401, code: CodeUnsupportedAlg, msg: `"none"`},
		{name: "alg HS256", jwt: makeJWT(map[string]any{"alg": "HS256"}, f.claims(), func([]byte) []byte { return []byte("mac") }), status: 401, code: CodeUnsupportedAlg},
		{name: "not a JWS", jwt: "not-a-jwt", status: 401, code: CodeMalformedJWT, msg: "1 parts"},
		{name: "header not base64", jwt: "!!." + parts[1] + "." + parts[2], status: 401, code: CodeMalformedJWT},
		{name: "payload not JSON", jwt: parts[0] + "." + b64([]byte("nope")) + "." + parts[2], status: 401, code: CodeMalformedJWT},
		{name: "no exp", jwt: with(func(c map[string]any) { delete(c, "exp") }), status: 401, code: CodeMalformedJWT, msg: "exp"},
		{name: "no sub", jwt: with(func(c map[string]any) { delete(c, "sub") }), status: 401, code: CodeMalformedJWT, msg: "sub"},
		{name: "expired", jwt: with(func(c map[string]any) { c["exp"] = now - 1 }), status: 401, code: CodeJWTExpired, msg: "expired"},
		{name: "exp now", jwt: with(func(c map[string]any) { c["exp"] = now }), status: 401, code: CodeJWTExpired},
		{name: "nbf in the future", jwt: with(func(c map[string]any) { c["nbf"] = now + 61 }), status: 401, code: CodeJWTNotYetValid, msg: "nbf"},
		{name: "iat in the future", jwt: with(func(c map[string]any) { c["iat"] = now + 3600 }), status: 401, code: CodeJWTNotYetValid, msg: "iat"},
		{name: "wrong issuer", jwt: with(func(c map[string]any) { c["iss"] = "https://evil.example" }), status: 401, code: CodeWrongIssuer, msg: `"https://evil.example"`},
		{name: "wrong audience", jwt: with(func(c map[string]any) { c["aud"] = "x" }), status: 401, code: CodeWrongAudience,
			msg: `aud ["x"] does not contain a client ID of identity provider idp-cce`},
		{name: "no audience", jwt: with(func(c map[string]any) { delete(c, "aud") }), status: 401, code: CodeMalformedJWT},
		{name: "unknown identity provider", jwt: good, idp: "idp-none", status: 404, code: CodeUnknownIdP, msg: `"idp-none"`},
		{name: "no X-Idp-Id", jwt: good, idp: "-", status: 400, code: CodeBadRequest, msg: HeaderIdpID},
		{name: "body not JSON", body: "{", status: 400, code: CodeBadRequest},
		{name: "no id_token", body: `{"auth":{"scope":{"project":{"id":"p"}}}}`, status: 400, code: CodeBadRequest, msg: "auth.id_token.id"},
		{name: "domain scope", body: `{"auth":{"id_token":{"id":"x.y.z"},"scope":{"domain":{"id":"d"}}}}`, status: 400, code: CodeBadRequest},
		{name: "no rule for the subject", jwt: with(func(c map[string]any) { c["sub"] = "system:serviceaccount:x:y" }), status: 403, code: CodeNoRule,
			msg: `"system:serviceaccount:x:y"`},
		{name: "project not allowed", jwt: good, project: otherProject, status: 403, code: CodeProjectNotAllowed, msg: otherProject},
		{name: "rule without projects", jwt: with(func(c map[string]any) { c["sub"] = "system:serviceaccount:other:sa" }), status: 403, code: CodeProjectNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			project := tt.project
			if project == "" {
				project = kmstest.DefaultProjectID
			}
			body := tt.body
			if body == "" {
				body = idTokenBody(tt.jwt, project)
			}
			header := map[string]string{HeaderIdpID: testIdP}
			switch tt.idp {
			case "-":
				header = nil
			case "":
			default:
				header[HeaderIdpID] = tt.idp
			}
			status, h, b := f.call(t, http.MethodPost, PathIDToken, body, header)
			e := wantIAMError(t, status, b, tt.status, tt.code)
			if !strings.Contains(e.Message, tt.msg) {
				t.Errorf("message %q does not contain %q", e.Message, tt.msg)
			}
			if h.Get(HeaderSubjectToken) != "" {
				t.Error("a refusal carries X-Subject-Token")
			}
			jwtParts := strings.Split(tt.jwt, ".")
			assertNoSecrets(t, b, append(jwtParts, tt.jwt)...)
		})
	}
	if st := f.iam.Stats(); st.IDTokenRefusals != int64(len(tests)) || st.Refusals != int64(len(tests)) || st.IDTokenExchanges != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestIAMRevokeAndRules(t *testing.T) {
	f := newIAMFixture(t)
	token := f.mustExchange(t, kmstest.DefaultProjectID)
	f.iam.Revoke(testIdP, testSubject)
	status, _, body := f.exchange(t, f.jwt(f.claims()), kmstest.DefaultProjectID)
	wantIAMError(t, status, body, http.StatusForbidden, CodeNoRule)
	if status, body := kmsWithToken(t, f.kms, token); status != http.StatusOK {
		t.Errorf("a token issued before Revoke: %d %s", status, body)
	}

	// Allow replaces the rule: now only otherProject.
	f.iam.Allow(testIdP, testSubject, otherProject)
	status, _, body = f.exchange(t, f.jwt(f.claims()), kmstest.DefaultProjectID)
	wantIAMError(t, status, body, http.StatusForbidden, CodeProjectNotAllowed)
	other := f.mustExchange(t, otherProject)
	if status, body := kmsWithToken(t, f.other, other); status != http.StatusOK {
		t.Errorf("other project's KMS: %d %s", status, body)
	}
	if got := f.iam.Rules(); len(got) != 1 || got[0].Projects[0] != otherProject {
		t.Errorf("rules %+v", got)
	}

	f.iam.DeleteIdentityProvider(testIdP)
	status, _, body = f.exchange(t, f.jwt(f.claims()), otherProject)
	wantIAMError(t, status, body, http.StatusNotFound, CodeUnknownIdP)
}

func TestIAMUnscopedToken(t *testing.T) {
	f := newIAMFixture(t)
	f.iam.Allow(testIdP, testSubject, kmstest.DefaultProjectID, otherProject)
	status, h, body := f.exchange(t, f.jwt(f.claims()), "")
	if status != http.StatusCreated {
		t.Fatalf("unscoped exchange: %d %s", status, body)
	}
	if strings.Contains(string(body), `"project"`) {
		t.Errorf("unscoped token body has a project: %s", body)
	}
	token := h.Get(HeaderSubjectToken)
	if status, _ := kmsWithToken(t, f.kms, token); status != http.StatusForbidden {
		t.Errorf("KMS accepted an unscoped token: %d", status)
	}
	c := f.mustSecurityTokens(t, token, 0)
	for _, srv := range []*kmstest.Server{f.kms, f.other} {
		if status, body := kmsWithAKSK(t, srv, c, f.clock.Now()); status != http.StatusOK {
			t.Errorf("KMS %s with the AK/SK of an unscoped token: %d %s", srv.ProjectID(), status, body)
		}
	}
}

func TestIAMSecurityTokens(t *testing.T) {
	f := newIAMFixture(t, WithCredentialLifetime(10*time.Minute))
	start := f.clock.Now()
	token := f.mustExchange(t, kmstest.DefaultProjectID)

	short := f.mustSecurityTokens(t, token, 300) // duration_seconds wins
	if expiry(t, short) != start.Add(5*time.Minute) {
		t.Errorf("expires_at %s, want +5m", short.ExpiresAt)
	}
	// The SDK's layout reads it too.
	if _, err := time.Parse("2006-01-02T15:04:05Z", short.ExpiresAt); err != nil {
		t.Errorf("the SDK cannot parse expires_at: %v", err)
	}
	if c := f.mustSecurityTokens(t, token, 1<<62); expiry(t, c) != start.Add(10*time.Minute) {
		t.Errorf("a huge duration_seconds: expires_at %s, want +10m", c.ExpiresAt)
	}
	long := f.mustSecurityTokens(t, token, 0) // the lifetime
	if expiry(t, long) != start.Add(10*time.Minute) {
		t.Errorf("expires_at %s, want +10m", long.ExpiresAt)
	}
	if short.Access == long.Access || short.Secret == long.Secret || short.SecurityToken == long.SecurityToken {
		t.Error("two issues share a credential")
	}

	// In the X-Auth-Token header, when the body has no id.
	status, _, body := f.call(t, http.MethodPost, PathSecurityTokens,
		`{"auth":{"identity":{"methods":["token"],"token":{"duration_seconds":900}}}}`, map[string]string{kmstest.HeaderAuthToken: token})
	if status != http.StatusCreated {
		t.Errorf("token in the header: %d %s", status, body)
	}

	f.clock.Step(5 * time.Minute)
	if status, body := kmsWithAKSK(t, f.kms, short, f.clock.Now()); status != http.StatusForbidden || errorOf(t, body).Code != kmstest.CodeTokenExpired {
		t.Errorf("expired AK/SK: %d %s", status, body)
	} else {
		assertNoSecrets(t, body, short.Secret, short.SecurityToken)
		if !strings.Contains(errorOf(t, body).Message, "temporary credentials") {
			t.Errorf("message %q", errorOf(t, body).Message)
		}
	}
	if status, body := kmsWithAKSK(t, f.kms, long, f.clock.Now()); status != http.StatusOK {
		t.Errorf("AK/SK still valid: %d %s", status, body)
	}
	// Capped by the token's remaining life.
	f.clock.Step(3 * time.Minute)
	capped := f.mustSecurityTokens(t, token, 0)
	if expiry(t, capped) != start.Add(10*time.Minute) {
		t.Errorf("expires_at %s, want the token's expiry", capped.ExpiresAt)
	}

	f.clock.Step(2 * time.Minute)
	if status, body := kmsWithToken(t, f.kms, token); status != http.StatusForbidden || errorOf(t, body).Code != kmstest.CodeTokenExpired {
		t.Errorf("expired token: %d %s", status, body)
	}
	if status, body := kmsWithAKSK(t, f.kms, long, f.clock.Now()); status != http.StatusForbidden || errorOf(t, body).Code != kmstest.CodeTokenExpired {
		t.Errorf("expired AK/SK: %d %s", status, body)
	}
	status, body = f.securityTokens(t, token, 0)
	wantIAMError(t, status, body, http.StatusUnauthorized, CodeTokenExpired)
	assertNoSecrets(t, body, token)

	status, body = f.securityTokens(t, "MIIunknown", 0)
	wantIAMError(t, status, body, http.StatusUnauthorized, CodeInvalidToken)
	assertNoSecrets(t, body, "MIIunknown")

	for _, bad := range []string{`{`, `{"auth":{}}`, `{"auth":{"identity":{"methods":["password"]}}}`, `{"auth":{"identity":{"methods":["token"]}}}`} {
		status, _, body := f.call(t, http.MethodPost, PathSecurityTokens, bad, nil)
		wantIAMError(t, status, body, http.StatusBadRequest, CodeBadRequest)
	}
	status, h, body := f.call(t, http.MethodGet, PathSecurityTokens, "", nil)
	wantIAMError(t, status, body, http.StatusMethodNotAllowed, CodeMethodNotAllowed)
	if h.Get("Allow") != http.MethodPost {
		t.Errorf("Allow %q", h.Get("Allow"))
	}

	// A new lifetime applies to what is issued next.
	f.iam.SetCredentialLifetime(2 * time.Minute)
	fresh := f.mustExchange(t, kmstest.DefaultProjectID)
	if c := f.mustSecurityTokens(t, fresh, 0); expiry(t, c) != f.clock.Now().Add(2*time.Minute) {
		t.Errorf("expires_at %s, want +2m", c.ExpiresAt)
	}
}

func TestIAMMetadata(t *testing.T) {
	f := newIAMFixture(t, WithCredentialLifetime(30*time.Minute))
	getKey := func(token string) (int, []byte) {
		h := map[string]string{}
		if token != "" {
			h[HeaderMetadataToken] = token
		}
		status, _, body := f.call(t, http.MethodGet, PathSecurityKey, "", h)
		return status, body
	}
	wantUnauthorized := func(status int, body []byte, agency bool) {
		t.Helper()
		var e metadataErrorBody
		if err := json.Unmarshal(body, &e); status != http.StatusUnauthorized || err != nil || e.Error.Code != 401 {
			t.Fatalf("want 401 with a metadata error body, got %d %s", status, body)
		}
		if strings.Contains(string(body), MetadataAgencyError) != agency {
			t.Errorf("agency phrase present = %v, want %v: %s", !agency, agency, body)
		}
	}

	for _, ttl := range []string{"", "0", "-1", "21601", "abc", "1.5"} {
		status, body := f.metadataToken(t, ttl)
		if status != http.StatusBadRequest {
			t.Errorf("TTL %q: %d %s", ttl, status, body)
		}
	}
	status, body := f.metadataToken(t, "60")
	if status != http.StatusOK || len(body) < 20 {
		t.Fatalf("metadata token: %d %s", status, body)
	}
	token := string(body)

	// The node has no agency yet.
	status, body = getKey(token)
	wantUnauthorized(status, body, true)
	if string(body) != `{"error":{"code":401,"message":"Please configure Cloud Service Agency first"}}` {
		t.Errorf("no-agency body %s", body)
	}

	f.iam.SetNodeAgency(kmstest.DefaultProjectID)
	status, body = getKey(token)
	c := f.wantCredential(t, "securitykey", status, body, "credential", 30*time.Minute)
	if status, _ := kmsWithAKSK(t, f.other, c, f.clock.Now()); status != http.StatusForbidden {
		t.Errorf("other project accepted the node's credentials: %d", status)
	}

	status, body = getKey("")
	wantUnauthorized(status, body, false)
	status, body = getKey("unknown-token")
	wantUnauthorized(status, body, false)
	assertNoSecrets(t, body, "unknown-token", c.Secret)

	f.clock.Step(time.Minute)
	status, body = getKey(token)
	wantUnauthorized(status, body, false)
	assertNoSecrets(t, body, token)

	f.clock.Step(29 * time.Minute)
	if status, body := kmsWithAKSK(t, f.kms, c, f.clock.Now()); status != http.StatusForbidden || errorOf(t, body).Code != kmstest.CodeTokenExpired {
		t.Errorf("expired metadata credentials: %d %s", status, body)
	}

	// Another project's agency.
	f.iam.SetNodeAgency(otherProject)
	_, body = f.metadataToken(t, "21600")
	if status, body = getKey(string(body)); status != http.StatusOK {
		t.Fatalf("securitykey: %d %s", status, body)
	}
	c = decodeCredential(t, body, "credential")
	if status, _ := kmsWithAKSK(t, f.kms, c, f.clock.Now()); status != http.StatusForbidden {
		t.Errorf("KMS accepted credentials of another project's agency: %d", status)
	}
	if status, body := kmsWithAKSK(t, f.other, c, f.clock.Now()); status != http.StatusOK {
		t.Errorf("other project's KMS: %d %s", status, body)
	}
	status, _, _ = f.call(t, http.MethodPost, PathSecurityKey, "", nil)
	if status != http.StatusMethodNotAllowed {
		t.Errorf("POST securitykey: %d", status)
	}
	if st := f.iam.Stats(); st.MetadataTokens != 2 || st.MetadataCredentials != 2 || st.Refusals != 6+5 {
		t.Errorf("stats %+v", st)
	}
}

func TestIAMPodIdentity(t *testing.T) {
	f := newIAMFixture(t, WithCredentialLifetime(15*time.Minute))
	const podToken = "pod-identity-token-0123456789"
	post := func(auth string) (int, []byte) {
		h := map[string]string{}
		if auth != "" {
			h["Authorization"] = auth
		}
		status, _, body := f.call(t, http.MethodPost, PathPodIdentity, "{}", h)
		return status, body
	}

	// No association configured: no token is right.
	status, body := post(podToken)
	wantIAMError(t, status, body, http.StatusUnauthorized, CodePodIdentityUnauthorized)

	f.iam.SetPodIdentity(podToken)
	status, body = post(podToken)
	wantIAMError(t, status, body, http.StatusForbidden, CodeNoPodIdentity)
	status, body = post("wrong-token")
	wantIAMError(t, status, body, http.StatusUnauthorized, CodePodIdentityUnauthorized)
	assertNoSecrets(t, body, podToken, "wrong-token")
	status, body = post("")
	wantIAMError(t, status, body, http.StatusUnauthorized, CodePodIdentityUnauthorized)

	f.iam.SetPodIdentity(" "+podToken+"\n", kmstest.DefaultProjectID)
	status, body = post(podToken + " \t")
	c := f.wantCredential(t, "pod identity", status, body, "credentials", 15*time.Minute)
	f.clock.Step(15 * time.Minute)
	if status, body := kmsWithAKSK(t, f.kms, c, f.clock.Now()); status != http.StatusForbidden || errorOf(t, body).Code != kmstest.CodeTokenExpired {
		t.Errorf("expired pod identity credentials: %d %s", status, body)
	}
	status, _, _ = f.call(t, http.MethodGet, PathPodIdentity, "", nil)
	if status != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", status)
	}
	if st := f.iam.Stats(); st.PodIdentityCredentials != 1 || st.Refusals != 5 {
		t.Errorf("stats %+v", st)
	}
}

func TestIAMFaults(t *testing.T) {
	f := newIAMFixture(t)
	f.iam.SetNodeAgency(kmstest.DefaultProjectID)
	f.iam.SetPodIdentity("pod", kmstest.DefaultProjectID)
	f.iam.InjectFault(Fault{Route: RouteIDToken, Status: 503, Count: 2})
	f.iam.InjectFault(Fault{Route: RouteMetadata, Status: 500, Count: 2})
	f.iam.InjectFault(Fault{Route: RoutePodIdentity, Status: 502})
	f.iam.InjectFault(Fault{Route: "nope", Status: 500})            // ignored
	f.iam.InjectFault(Fault{Route: RouteSecurityTokens, Count: -1}) // ignored
	if got := f.iam.Faults(); len(got) != 3 {
		t.Fatalf("faults %+v", got)
	}

	jwt := f.jwt(f.claims())
	for range 2 {
		status, _, body := f.exchange(t, jwt, kmstest.DefaultProjectID)
		wantIAMError(t, status, body, http.StatusServiceUnavailable, "IAM.0503")
		assertNoSecrets(t, body, jwt)
	}
	token := f.mustExchange(t, kmstest.DefaultProjectID)
	f.mustSecurityTokens(t, token, 0)

	// Both metadata routes share the fault.
	status, body := f.metadataToken(t, "60")
	if status != http.StatusInternalServerError || !strings.Contains(string(body), `"code":500`) {
		t.Errorf("metadata fault: %d %s", status, body)
	}
	status, _, body = f.call(t, http.MethodGet, PathSecurityKey, "", nil)
	if status != http.StatusInternalServerError {
		t.Errorf("securitykey fault: %d %s", status, body)
	}
	if status, _ := f.metadataToken(t, "60"); status != http.StatusOK {
		t.Errorf("metadata after the fault: %d", status)
	}

	// Count 0 acts until cleared.
	for range 3 {
		status, _, body := f.call(t, http.MethodPost, PathPodIdentity, "{}", map[string]string{"Authorization": "pod"})
		wantIAMError(t, status, body, http.StatusBadGateway, "IAM.0502")
	}
	if got := f.iam.Faults(); len(got) != 1 || got[0].Route != RoutePodIdentity {
		t.Errorf("pending %+v", got)
	}
	f.iam.ClearFaults()
	status, _, body = f.call(t, http.MethodPost, PathPodIdentity, "{}", map[string]string{"Authorization": "pod"})
	if status != http.StatusOK {
		t.Errorf("pod identity after ClearFaults: %d %s", status, body)
	}

	want := Stats{
		IDTokenExchanges: 1, IDTokenRefusals: 2, SecurityTokens: 1, MetadataTokens: 1,
		PodIdentityCredentials: 1, Refusals: 2 + 2 + 3, FaultsApplied: 7,
	}
	if got := f.iam.Stats(); got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}
	f.iam.ResetStats()
	if got := f.iam.Stats(); got != (Stats{}) {
		t.Errorf("after ResetStats %+v", got)
	}
}

// TestIAMErrorsHoldNoSecrets checks every error answer, after credentials were issued, for the
// id_token and everything IAM issued.
func TestIAMErrorsHoldNoSecrets(t *testing.T) {
	var logs bytes.Buffer
	f := newIAMFixture(t, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	f.iam.SetNodeAgency(kmstest.DefaultProjectID)
	f.iam.SetPodIdentity("pod-secret-token", kmstest.DefaultProjectID)
	jwt := f.jwt(f.claims())
	status, h, body := f.exchange(t, jwt, kmstest.DefaultProjectID)
	if status != http.StatusCreated {
		t.Fatalf("exchange: %d %s", status, body)
	}
	token := h.Get(HeaderSubjectToken)
	c := f.mustSecurityTokens(t, token, 0)
	_, meta := f.metadataToken(t, "60")
	secrets := []string{jwt, token, c.Access, c.Secret, c.SecurityToken, string(meta), "pod-secret-token"}
	secrets = append(secrets, strings.Split(jwt, ".")...)

	f.clock.Step(2 * time.Hour)
	var bodies [][]byte
	collect := func(_ int, _ http.Header, b []byte) { bodies = append(bodies, b) }
	collect(f.exchange(t, jwt, kmstest.DefaultProjectID))
	collect(f.exchange(t, jwt, otherProject))
	collect(f.call(t, http.MethodPost, PathSecurityTokens, `{"auth":{"identity":{"methods":["token"],"token":{"id":"`+token+`"}}}}`, nil))
	collect(f.call(t, http.MethodGet, PathSecurityKey, "", map[string]string{HeaderMetadataToken: string(meta)}))
	collect(f.call(t, http.MethodPost, PathPodIdentity, "{}", map[string]string{"Authorization": "pod-secret-token-x"}))
	collect(f.call(t, http.MethodPost, PathIDToken, `{"auth":{"id_token":{"id":"`+jwt+`"}`, map[string]string{HeaderIdpID: testIdP}))
	for _, b := range bodies {
		assertNoSecrets(t, b, secrets...)
	}
	if n := strings.Count(logs.String(), "iam request"); n != 3+len(bodies) || !strings.Contains(logs.String(), "code=IAM.0104") {
		t.Errorf("%d log lines:\n%s", n, logs.String())
	}
	assertNoSecrets(t, logs.Bytes(), secrets...)
	for _, srv := range []*kmstest.Server{f.kms, f.other} {
		status, body := kmsWithAKSK(t, srv, c, f.clock.Now())
		if status == http.StatusOK {
			t.Errorf("%s accepted expired credentials", srv.ProjectID())
		}
		assertNoSecrets(t, body, secrets...)
		status, body = kmsWithToken(t, srv, token)
		if status == http.StatusOK {
			t.Errorf("%s accepted an expired token", srv.ProjectID())
		}
		assertNoSecrets(t, body, secrets...)
	}
}

func TestIAMUnknownPath(t *testing.T) {
	f := newIAMFixture(t)
	status, _, body := f.call(t, http.MethodGet, "/v3/auth/tokens", "", nil)
	wantIAMError(t, status, body, http.StatusNotFound, CodeUnknownPath)
	if st := f.iam.Stats(); st != (Stats{}) {
		t.Errorf("an unknown path was counted: %+v", st)
	}
}

func TestIAMConcurrentUse(t *testing.T) {
	f := newIAMFixture(t)
	f.iam.SetNodeAgency(kmstest.DefaultProjectID)
	jwt := f.jwt(f.claims())
	const workers = 8
	errs := make(chan string, workers*3)
	seen := make(chan string, workers*2)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			status, h, body := f.exchange(t, jwt, kmstest.DefaultProjectID)
			if status != http.StatusCreated {
				errs <- string(body)
				return
			}
			status, body = f.securityTokens(t, h.Get(HeaderSubjectToken), 0)
			if status != http.StatusCreated {
				errs <- string(body)
				return
			}
			seen <- h.Get(HeaderSubjectToken)
			seen <- decodeCredential(t, body, "credential").Access
			f.iam.SetCredentialLifetime(time.Hour)
			_ = f.iam.Stats()
		})
	}
	wg.Wait()
	close(errs)
	close(seen)
	for e := range errs {
		t.Error(e)
	}
	distinct := map[string]bool{}
	for s := range seen {
		distinct[s] = true
	}
	if len(distinct) != workers*2 {
		t.Errorf("%d distinct tokens and access keys, want %d", len(distinct), workers*2)
	}
	if st := f.iam.Stats(); st.IDTokenExchanges != workers || st.SecurityTokens != workers {
		t.Errorf("stats %+v", st)
	}
}

func TestIAMSecretsListsWhatItWasSentAndIssued(t *testing.T) {
	f := newIAMFixture(t)
	jwt := f.jwt(f.claims())
	status, h, body := f.exchange(t, jwt, kmstest.DefaultProjectID)
	if status != http.StatusCreated {
		t.Fatalf("exchange: %d %s", status, body)
	}
	token := h.Get(HeaderSubjectToken)
	status, body = f.securityTokens(t, token, 900)
	if status != http.StatusCreated {
		t.Fatalf("securitytokens: %d %s", status, body)
	}
	c := decodeCredential(t, body, "credential")
	secrets := f.iam.Secrets()
	for name, want := range map[string]string{"id_token": jwt, "IAM token": token, "secret key": c.Secret, "security token": c.SecurityToken} {
		if !slices.Contains(secrets, want) {
			t.Errorf("Secrets() lacks the %s", name)
		}
	}
	if slices.Contains(secrets, c.Access) {
		t.Error("Secrets() lists the access key, which is not a secret")
	}
}

func TestIAMRefusesScopedTokensWhenAsked(t *testing.T) {
	f := newIAMFixture(t)
	f.iam.RefuseScopedTokens(true)
	status, _, body := f.exchange(t, f.jwt(f.claims()), kmstest.DefaultProjectID)
	if e := wantIAMError(t, status, body, http.StatusBadRequest, CodeBadRequest); !strings.Contains(e.Message, "unscoped") {
		t.Errorf("scoped exchange refused with %q, want it to ask for an unscoped token", e.Message)
	}
	c := f.mustSecurityTokens(t, f.mustExchange(t, ""), 0)
	if status, body := kmsWithAKSK(t, f.kms, c, f.clock.Now()); status != http.StatusOK {
		t.Errorf("KMS with the AK/SK of an unscoped token: %d %s", status, body)
	}
	f.iam.RefuseScopedTokens(false)
	if status, _, body := f.exchange(t, f.jwt(f.claims()), kmstest.DefaultProjectID); status != http.StatusCreated {
		t.Errorf("scoped exchange after RefuseScopedTokens(false): %d %s", status, body)
	}
}

func TestIAMMetadataWithoutSessionTokens(t *testing.T) {
	f := newIAMFixture(t)
	f.iam.SetNodeAgency(kmstest.DefaultProjectID)
	f.iam.SetMetadataTokenless(true)
	if status, body := f.metadataToken(t, "60"); status != http.StatusMethodNotAllowed {
		t.Fatalf("metadata token PUT on a tokenless host: %d %s, want 405", status, body)
	}
	status, _, body := f.call(t, http.MethodGet, PathSecurityKey, "", nil)
	if status != http.StatusOK {
		t.Fatalf("securitykey without a token on a tokenless host: %d %s", status, body)
	}
	if status, _, _ := f.call(t, http.MethodGet, PathSecurityKey, "", map[string]string{HeaderMetadataToken: "forged"}); status != http.StatusUnauthorized {
		t.Errorf("securitykey with an unknown token on a tokenless host: %d, want 401", status)
	}
	f.iam.SetMetadataTokenless(false)
	if status, body := f.metadataToken(t, "60"); status != http.StatusOK {
		t.Errorf("metadata token PUT after SetMetadataTokenless(false): %d %s", status, body)
	}
}

func TestIAMFaultsOfOneMetadataRoute(t *testing.T) {
	f := newIAMFixture(t)
	f.iam.SetNodeAgency(kmstest.DefaultProjectID)
	f.iam.InjectFault(Fault{Route: RouteSecurityKey, Status: http.StatusUnauthorized, Count: 1})
	status, token := f.metadataToken(t, "60")
	if status != http.StatusOK {
		t.Fatalf("metadata token with a securitykey fault queued: %d %s", status, token)
	}
	h := map[string]string{HeaderMetadataToken: string(token)}
	if status, _, _ := f.call(t, http.MethodGet, PathSecurityKey, "", h); status != http.StatusUnauthorized {
		t.Errorf("securitykey under a 401 fault: %d", status)
	}
	if status, _, body := f.call(t, http.MethodGet, PathSecurityKey, "", h); status != http.StatusOK {
		t.Errorf("securitykey after the fault: %d %s", status, body)
	}
	f.iam.InjectFault(Fault{Route: RouteMetadataToken, Status: http.StatusNotFound, Count: 1})
	if status, _ := f.metadataToken(t, "60"); status != http.StatusNotFound {
		t.Errorf("metadata token under a 404 fault: %d", status)
	}
}

func TestIAMEchoFaultRepeatsTheCredentialJSONEscaped(t *testing.T) {
	f := newIAMFixture(t)
	f.iam.InjectFault(Fault{Route: RouteIDToken, Status: http.StatusBadRequest, Count: 1, Echo: true})
	jwt := f.jwt(f.claims())
	status, _, body := f.exchange(t, jwt, "")
	if status != http.StatusBadRequest || strings.Contains(string(body), jwt) {
		t.Fatalf("echo fault: %d %s, want 400 without the raw token", status, body)
	}
	var e iamErrorBody
	if err := json.Unmarshal(body, &e); err != nil || !strings.Contains(e.Message, jwt) {
		t.Errorf("decoded message %q (%v) does not repeat the id_token", e.Message, err)
	}
}

func TestIAMIssuesSecurityTokensOfTheLengthAsked(t *testing.T) {
	f := newIAMFixture(t)
	f.iam.SetSecurityTokenLength(1 << 20)
	c := f.mustSecurityTokens(t, f.mustExchange(t, kmstest.DefaultProjectID), 0)
	if len(c.SecurityToken) != 1<<20 {
		t.Errorf("security token of %d bytes, want 1 MiB", len(c.SecurityToken))
	}
}
