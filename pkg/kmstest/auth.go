package kmstest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth/signer"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/request"
)

// MaxClockSkew is how far X-Sdk-Date may be from the emulator's clock.
const MaxClockSkew = 15 * time.Minute

// The authentication headers.
const (
	HeaderAuthToken     = "X-Auth-Token"
	HeaderSecurityToken = "X-Security-Token"
	HeaderSdkDate       = signer.HeaderXDate
	headerContentSha256 = "X-Sdk-Content-Sha256"
	unsignedPayload     = "UNSIGNED-PAYLOAD"
	authScheme          = "SDK-HMAC-SHA256"
)

// The values of RequestRecord.Auth.
const (
	AuthNone      = ""
	AuthToken     = "token"
	AuthAKSK      = "aksk"
	AuthAnonymous = "anonymous"
)

// expiredRetention is how long temporary credentials are kept after they expire, so that
// requests with them get KMS.0303 rather than KMS.0302; older ones are forgotten when
// temporary credentials are added.
const expiredRetention = 24 * time.Hour

// credentials are the accepted tokens and AK/SK pairs.
type credentials struct {
	mu       sync.RWMutex
	tokens   map[string]tokenEntry
	aksk     map[string]akskEntry
	disabled bool
}

type tokenEntry struct {
	expired   bool      // ExpireToken
	expiresAt time.Time // zero: never (AddToken)
}

type akskEntry struct {
	sk            string
	securityToken string
	expiresAt     time.Time // zero: never (AddAKSK)
}

func newCredentials() *credentials {
	return &credentials{tokens: make(map[string]tokenEntry), aksk: make(map[string]akskEntry)}
}

// expiredAt reports whether a credential expiring at t (zero: never) has expired at now.
func expiredAt(t, now time.Time) bool { return !t.IsZero() && !now.Before(t) }

// prune forgets temporary credentials that expired more than expiredRetention before now.
// The caller holds c.mu.
func (c *credentials) prune(now time.Time) {
	limit := now.Add(-expiredRetention)
	for k, v := range c.tokens {
		if !v.expiresAt.IsZero() && v.expiresAt.Before(limit) {
			delete(c.tokens, k)
		}
	}
	for k, v := range c.aksk {
		if !v.expiresAt.IsZero() && v.expiresAt.Before(limit) {
			delete(c.aksk, k)
		}
	}
}

// authResult says who a request authenticated as.
type authResult struct {
	kind      string
	accessKey string
}

// AddToken accepts an IAM token (X-Auth-Token) for the emulator's project.
func (e *Emulator) AddToken(token string) {
	e.creds.mu.Lock()
	defer e.creds.mu.Unlock()
	e.creds.tokens[token] = tokenEntry{}
}

// AddTemporaryToken accepts an IAM token until expiresAt, by the emulator's clock (see
// WithClock): from then on requests with it get 403 KMS.0303. IAM registers the tokens it
// issues this way.
func (e *Emulator) AddTemporaryToken(token string, expiresAt time.Time) {
	e.creds.mu.Lock()
	defer e.creds.mu.Unlock()
	e.creds.prune(e.now())
	e.creds.tokens[token] = tokenEntry{expiresAt: expiresAt}
}

// ExpireToken marks a token expired: requests with it get 403 KMS.0303. An unknown token is
// registered as expired.
func (e *Emulator) ExpireToken(token string) {
	e.creds.mu.Lock()
	defer e.creds.mu.Unlock()
	e.creds.tokens[token] = tokenEntry{expired: true}
}

// RemoveToken forgets a token: requests with it get 403 KMS.0302.
func (e *Emulator) RemoveToken(token string) {
	e.creds.mu.Lock()
	defer e.creds.mu.Unlock()
	delete(e.creds.tokens, token)
}

// AddAKSK accepts an access key and its secret key. A non-empty securityToken makes them
// temporary credentials: requests must then send it, signed, in X-Security-Token.
func (e *Emulator) AddAKSK(ak, sk, securityToken string) {
	e.creds.mu.Lock()
	defer e.creds.mu.Unlock()
	e.creds.aksk[ak] = akskEntry{sk: sk, securityToken: securityToken}
}

// AddTemporaryAKSK is AddAKSK for temporary credentials that expire at expiresAt, by the
// emulator's clock (see WithClock): from then on requests signed with them get 403 KMS.0303.
// IAM registers the AK/SK it issues this way.
func (e *Emulator) AddTemporaryAKSK(ak, sk, securityToken string, expiresAt time.Time) {
	e.creds.mu.Lock()
	defer e.creds.mu.Unlock()
	e.creds.prune(e.now())
	e.creds.aksk[ak] = akskEntry{sk: sk, securityToken: securityToken, expiresAt: expiresAt}
}

// RemoveAKSK forgets an access key.
func (e *Emulator) RemoveAKSK(ak string) {
	e.creds.mu.Lock()
	defer e.creds.mu.Unlock()
	delete(e.creds.aksk, ak)
}

// authenticate checks a request's credentials; body is the request body as received.
func (e *Emulator) authenticate(r *http.Request, body []byte) (authResult, *apiError) {
	e.creds.mu.RLock()
	disabled := e.creds.disabled
	e.creds.mu.RUnlock()
	if disabled {
		return authResult{kind: AuthAnonymous}, nil
	}
	if vals, ok := r.Header[HeaderAuthToken]; ok {
		return authResult{kind: AuthToken}, e.checkToken(strings.Join(vals, ","))
	}
	if v := r.Header.Get("Authorization"); v != "" {
		ak, err := e.checkSignature(r, v, body)
		return authResult{kind: AuthAKSK, accessKey: ak}, err
	}
	return authResult{}, forbidden(CodeTokenMissing, "no credentials: send X-Auth-Token or an %s Authorization header", authScheme)
}

func (e *Emulator) checkToken(token string) *apiError {
	if token == "" {
		return forbidden(CodeTokenMissing, "X-Auth-Token is empty")
	}
	e.creds.mu.RLock()
	entry, ok := e.creds.tokens[token]
	e.creds.mu.RUnlock()
	switch {
	case !ok:
		return forbidden(CodeTokenInvalid, "X-Auth-Token is not valid")
	case entry.expired:
		return forbidden(CodeTokenExpired, "X-Auth-Token has expired")
	case expiredAt(entry.expiresAt, e.now()):
		return forbidden(CodeTokenExpired, "X-Auth-Token has expired: the temporary credentials expired at %s", entry.expiresAt.UTC().Format(time.RFC3339))
	default:
		return nil
	}
}

// authHeader is a parsed SDK-HMAC-SHA256 Authorization header.
type authHeader struct {
	access        string
	signedHeaders []string
	signature     string
}

func parseAuthorization(v string) (authHeader, error) {
	var h authHeader
	rest, ok := strings.CutPrefix(v, authScheme+" ")
	if !ok {
		return h, fmt.Errorf("unsupported authorization scheme, want %s", authScheme)
	}
	for part := range strings.SplitSeq(rest, ",") {
		name, val, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch name {
		case "Access":
			h.access = val
		case "SignedHeaders":
			h.signedHeaders = strings.Split(val, ";")
		case "Signature":
			h.signature = val
		}
	}
	if h.access == "" || len(h.signedHeaders) == 0 || h.signedHeaders[0] == "" || h.signature == "" {
		return h, errors.New("authorization header needs Access, SignedHeaders and Signature")
	}
	return h, nil
}

// checkSignature verifies an AK/SK signed request and returns its access key.
func (e *Emulator) checkSignature(r *http.Request, authz string, body []byte) (string, *apiError) {
	h, err := parseAuthorization(authz)
	if err != nil {
		return "", forbidden(CodeTokenInvalid, "%v", err)
	}
	e.creds.mu.RLock()
	entry, ok := e.creds.aksk[h.access]
	e.creds.mu.RUnlock()
	if !ok {
		return h.access, forbidden(CodeTokenInvalid, "unknown access key")
	}
	if aerr := e.checkSignedDate(r, h); aerr != nil {
		return h.access, aerr
	}
	if aerr := checkSecurityToken(r, h, entry); aerr != nil {
		return h.access, aerr
	}
	if aerr := checkContentHash(r, body); aerr != nil {
		return h.access, aerr
	}
	want, err := expectedSignature(r, h, entry.sk, body)
	if err != nil {
		return h.access, forbidden(CodeTokenInvalid, "cannot verify the signature: %v", err)
	}
	if !hmac.Equal([]byte(want.signature), []byte(h.signature)) ||
		strings.Join(want.signedHeaders, ";") != strings.Join(h.signedHeaders, ";") {
		return h.access, forbidden(CodeTokenInvalid, "the request signature does not match")
	}
	if expiredAt(entry.expiresAt, e.now()) {
		return h.access, forbidden(CodeTokenExpired, "the temporary credentials of the access key expired at %s", entry.expiresAt.UTC().Format(time.RFC3339))
	}
	return h.access, nil
}

func (e *Emulator) checkSignedDate(r *http.Request, h authHeader) *apiError {
	if !slices.Contains(h.signedHeaders, strings.ToLower(HeaderSdkDate)) {
		return forbidden(CodeTokenInvalid, "%s must be a signed header", HeaderSdkDate)
	}
	t, err := time.Parse(signer.BasicDateFormat, r.Header.Get(HeaderSdkDate))
	if err != nil {
		return forbidden(CodeTokenInvalid, "invalid %s, want the format %s", HeaderSdkDate, signer.BasicDateFormat)
	}
	if skew := e.now().Sub(t).Abs(); skew > MaxClockSkew {
		return forbidden(CodeTokenInvalid, "%s is %s away from the server time, more than %s", HeaderSdkDate, skew.Round(time.Second), MaxClockSkew)
	}
	return nil
}

func checkSecurityToken(r *http.Request, h authHeader, entry akskEntry) *apiError {
	got, sent := r.Header[HeaderSecurityToken]
	switch {
	case entry.securityToken == "" && sent:
		return forbidden(CodeTokenInvalid, "%s sent with permanent credentials", HeaderSecurityToken)
	case entry.securityToken == "":
		return nil
	case !sent:
		return forbidden(CodeTokenMissing, "temporary credentials need %s", HeaderSecurityToken)
	case !slices.Contains(h.signedHeaders, strings.ToLower(HeaderSecurityToken)):
		return forbidden(CodeTokenInvalid, "%s must be a signed header", HeaderSecurityToken)
	case !hmac.Equal([]byte(strings.Join(got, ",")), []byte(entry.securityToken)):
		return forbidden(CodeTokenInvalid, "%s does not match the access key", HeaderSecurityToken)
	default:
		return nil
	}
}

// checkContentHash rejects an X-Sdk-Content-Sha256 that is neither UNSIGNED-PAYLOAD nor the
// body's hash: the signer would otherwise trust it instead of hashing the body.
func checkContentHash(r *http.Request, body []byte) *apiError {
	v := r.Header.Get(headerContentSha256)
	if v == "" || v == unsignedPayload {
		return nil
	}
	sum := sha256.Sum256(body)
	if !strings.EqualFold(v, hex.EncodeToString(sum[:])) {
		return forbidden(CodeTokenInvalid, "%s does not match the body", headerContentSha256)
	}
	return nil
}

// expectedSignature signs the received request again with the official signer: the method,
// path, query, the values of the signed headers and the body, as the client signed them.
func expectedSignature(r *http.Request, h authHeader, sk string, body []byte) (authHeader, error) {
	b := request.NewHttpRequestBuilder().
		WithMethod(r.Method).
		WithEndpoint(scheme(r)+"://"+r.Host).
		WithPath(r.URL.Path).
		WithBody("json", string(body))
	for name, vals := range r.URL.Query() {
		b.AddQueryParam(name, reflect.ValueOf(vals))
	}
	for _, name := range h.signedHeaders {
		v, ok := signedHeaderValue(r, name)
		if !ok {
			return authHeader{}, fmt.Errorf("signed header %q is missing", name)
		}
		b.AddHeaderParam(http.CanonicalHeaderKey(name), v)
	}
	headers, err := signer.Signer{}.Sign(b.Build(), h.access, sk)
	if err != nil {
		return authHeader{}, fmt.Errorf("sign: %w", err)
	}
	return parseAuthorization(headers[signer.HeaderAuthorization])
}

func signedHeaderValue(r *http.Request, name string) (string, bool) {
	if name == signer.HeaderHost {
		return r.Host, r.Host != ""
	}
	vals, ok := r.Header[http.CanonicalHeaderKey(name)]
	return strings.Join(vals, ","), ok
}

func scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}
