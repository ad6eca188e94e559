package iamtest

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/internal/wire"
)

// The paths IAM serves (see IAM.ServeHTTP).
const (
	// PathIDToken exchanges an OIDC id_token for an IAM token (CreateTokenWithIdToken).
	PathIDToken = "/v3.0/OS-AUTH/id-token/tokens"
	// PathSecurityTokens exchanges an IAM token for temporary AK/SK
	// (CreateTemporaryAccessKeyByToken).
	PathSecurityTokens = "/v3.0/OS-CREDENTIAL/securitytokens"
	// PathMetadataToken issues a session token of the ECS metadata service.
	PathMetadataToken = "/meta-data/latest/api/token"
	// PathSecurityKey issues the node agency's temporary AK/SK (ECS metadata service).
	PathSecurityKey = "/openstack/latest/securitykey"
	// PathPodIdentity issues a pod's temporary AK/SK (CCE pod identity).
	PathPodIdentity = "/v1/pod-identity/credentials"
	// AdminPrefix is where IAM's admin API lives (see IAM.AdminHandler).
	AdminPrefix = "/admin/iam/"
)

// The headers of the IAM, metadata and pod identity routes.
const (
	HeaderIdpID            = "X-Idp-Id"
	HeaderSubjectToken     = "X-Subject-Token"
	HeaderRequestID        = "X-Request-Id"
	HeaderMetadataToken    = "X-Metadata-Token"
	HeaderMetadataTokenTTL = "X-Metadata-Token-Ttl-Seconds"
)

const (
	// MaxMetadataTokenTTL is the longest X-Metadata-Token-Ttl-Seconds accepted, in seconds.
	MaxMetadataTokenTTL = 21600
	// MetadataAgencyError is the message of the metadata service when the node has no agency;
	// the SDK recognises the answer by it.
	MetadataAgencyError = "Please configure Cloud Service Agency first"
	// TimeFormat is the format of expires_at and issued_at in IAM's answers (UTC).
	TimeFormat = "2006-01-02T15:04:05.000000Z"
)

// The routes of Fault.Route.
const (
	RouteIDToken        = "id-token"       // POST PathIDToken
	RouteSecurityTokens = "securitytokens" // POST PathSecurityTokens
	RouteMetadata       = "metadata"       // both metadata routes
	RouteMetadataToken  = "metadata-token" // PUT PathMetadataToken only
	RouteSecurityKey    = "securitykey"    // GET PathSecurityKey only
	RoutePodIdentity    = "pod-identity"   // POST PathPodIdentity
)

// The error codes of IAM's answers on the id-token, securitytokens and pod identity routes;
// the package comment lists their statuses and causes. An injected fault answers its status
// with the code "IAM.0" followed by the status, such as "IAM.0503".
const (
	CodeBadRequest              = "IAM.0001"
	CodeUnknownIdP              = "IAM.0002"
	CodeMethodNotAllowed        = "IAM.0003"
	CodeUnknownPath             = "IAM.0004"
	CodeMalformedJWT            = "IAM.0101"
	CodeBadSignature            = "IAM.0102"
	CodeUnsupportedAlg          = "IAM.0103"
	CodeJWTExpired              = "IAM.0104"
	CodeJWTNotYetValid          = "IAM.0105"
	CodeWrongIssuer             = "IAM.0106"
	CodeWrongAudience           = "IAM.0107"
	CodeNoRule                  = "IAM.0201"
	CodeProjectNotAllowed       = "IAM.0202"
	CodeInvalidToken            = "IAM.0301"
	CodeTokenExpired            = "IAM.0302"
	CodePodIdentityUnauthorized = "IAM.0401"
	CodeNoPodIdentity           = "IAM.0402"
)

const (
	contentTypeJSON = "application/json;charset=UTF-8"
	// expiredRetention is how long IAM and metadata tokens are kept after they expire, so that
	// a request with one is told it expired rather than unknown.
	expiredRetention = 24 * time.Hour
)

// expired reports whether a token expiring at t has expired at now.
func expired(t, now time.Time) bool { return !now.Before(t) }

// iamError is an error answer of IAM's routes.
type iamError struct {
	status int
	code   string // "" on the metadata routes
	msg    string
	allow  string // the Allow header of a 405
}

func iamErr(status int, code, format string, args ...any) *iamError {
	return &iamError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

// iamReply is a successful answer.
type iamReply struct {
	status      int
	contentType string
	header      map[string]string
	body        []byte
}

// iamErrorBody is the error body of the id-token, securitytokens and pod identity routes.
type iamErrorBody struct {
	Code    string `json:"error_code"`
	Message string `json:"error_msg"`
}

// metadataErrorBody is the error body of the metadata routes.
type metadataErrorBody struct {
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// ServeHTTP serves IAM's routes, without the admin API:
//
//	POST /v3.0/OS-AUTH/id-token/tokens        id_token -> IAM token
//	POST /v3.0/OS-CREDENTIAL/securitytokens   IAM token -> temporary AK/SK
//	PUT  /meta-data/latest/api/token          metadata session token
//	GET  /openstack/latest/securitykey        node agency AK/SK
//	POST /v1/pod-identity/credentials         pod identity AK/SK
//
// Other paths get 404 IAM.0004 and are not counted.
func (i *IAM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var route, detail string
	var handle func(*http.Request) (iamReply, *iamError)
	switch r.URL.Path {
	case PathIDToken:
		route, handle = RouteIDToken, i.exchangeIDToken
	case PathSecurityTokens:
		route, handle = RouteSecurityTokens, i.securityTokens
	case PathMetadataToken:
		route, detail, handle = RouteMetadata, RouteMetadataToken, i.metadataToken
	case PathSecurityKey:
		route, detail, handle = RouteMetadata, RouteSecurityKey, i.securityKey
	case PathPodIdentity:
		route, handle = RoutePodIdentity, i.podIdentity
	default:
		writeIAMError(w, "", iamErr(http.StatusNotFound, CodeUnknownPath, "no IAM API at %s", r.URL.Path))
		return
	}
	start := time.Now()
	i.mu.Lock()
	f, faulted := i.takeFault(route, detail)
	i.mu.Unlock()
	var rep iamReply
	var ierr *iamError
	switch {
	case faulted && f.Echo:
		i.mu.Lock()
		i.stats.Refusals++
		if route == RouteIDToken {
			i.stats.IDTokenRefusals++
		}
		i.mu.Unlock()
		i.log(r, route, f.Status, "", time.Since(start))
		secret := carriedCredential(r)
		i.remember(secret)
		writeEcho(w, f.Status, secret)
		return
	case faulted:
		ierr = iamErr(f.Status, fmt.Sprintf("IAM.%04d", f.Status), "injected fault: %d %s", f.Status, http.StatusText(f.Status))
	default:
		rep, ierr = handle(r)
	}
	if ierr != nil {
		i.mu.Lock()
		i.stats.Refusals++
		if route == RouteIDToken {
			i.stats.IDTokenRefusals++
		}
		i.mu.Unlock()
		i.log(r, route, ierr.status, ierr.code, time.Since(start))
		writeIAMError(w, route, ierr)
		return
	}
	i.log(r, route, rep.status, "", time.Since(start))
	rep.write(w)
}

func (rep iamReply) write(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", rep.contentType)
	h.Set("Content-Length", strconv.Itoa(len(rep.body)))
	for k, v := range rep.header {
		h.Set(k, v)
	}
	w.WriteHeader(rep.status)
	_, _ = w.Write(rep.body)
}

func (i *IAM) log(r *http.Request, route string, status int, code string, d time.Duration) {
	if i.logger == nil {
		return
	}
	i.logger.LogAttrs(r.Context(), slog.LevelInfo, "iam request",
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.String("route", route),
		slog.Int("status", status),
		slog.String("code", code),
		slog.Duration("duration", d),
	)
}

// carriedCredential is the credential a request carries, "" when none.
func carriedCredential(r *http.Request) string {
	for _, h := range []string{"Authorization", HeaderMetadataToken, kmstest.HeaderAuthToken} {
		if v := r.Header.Get(h); v != "" {
			return v
		}
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, kmstest.MaxBodyBytes))
	var q struct {
		Auth struct {
			IDToken struct {
				ID string `json:"id"`
			} `json:"id_token"`
			Identity struct {
				Token struct {
					ID string `json:"id"`
				} `json:"token"`
			} `json:"identity"`
		} `json:"auth"`
	}
	_ = json.Unmarshal(body, &q)
	if q.Auth.IDToken.ID != "" {
		return q.Auth.IDToken.ID
	}
	return q.Auth.Identity.Token.ID
}

// writeEcho answers status with an error message that repeats secret JSON-escaped.
func writeEcho(w http.ResponseWriter, status int, secret string) {
	var escaped strings.Builder
	for _, r := range secret {
		if r > 0xFFFF {
			r = '?'
		}
		fmt.Fprintf(&escaped, "\\u%04x", r)
	}
	body := fmt.Sprintf(`{"error_code":"IAM.%04d","error_msg":"injected fault: %d %s; the request carried %s"}`,
		status, status, http.StatusText(status), escaped.String())
	iamReply{status: status, contentType: contentTypeJSON, body: []byte(body)}.write(w)
}

func writeIAMError(w http.ResponseWriter, route string, e *iamError) {
	var body []byte
	if route == RouteMetadata {
		var b metadataErrorBody
		b.Error.Code, b.Error.Message = e.status, e.msg
		body = wire.Marshal(b)
	} else {
		body = wire.Marshal(iamErrorBody{Code: e.code, Message: e.msg})
	}
	rep := iamReply{status: e.status, contentType: contentTypeJSON, body: body}
	if e.allow != "" {
		rep.header = map[string]string{"Allow": e.allow}
	}
	rep.write(w)
}

func methodNotAllowed(r *http.Request, want string) *iamError {
	e := iamErr(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "method %s not allowed on %s, use %s", r.Method, r.URL.Path, want)
	e.allow = want
	return e
}

func badIAMRequest(format string, args ...any) *iamError {
	return iamErr(http.StatusBadRequest, CodeBadRequest, format, args...)
}

// readIAMBody reads a request body of at most kmstest.MaxBodyBytes.
func readIAMBody(r *http.Request) ([]byte, *iamError) {
	b, err := io.ReadAll(io.LimitReader(r.Body, kmstest.MaxBodyBytes+1))
	if err != nil {
		return nil, badIAMRequest("cannot read the request body")
	}
	if len(b) > kmstest.MaxBodyBytes {
		return nil, badIAMRequest("the request body is longer than %d bytes", kmstest.MaxBodyBytes)
	}
	return b, nil
}

// decodeIAMBody decodes a JSON request body. The error names the JSON problem, never a value.
func decodeIAMBody(r *http.Request, v any) *iamError {
	b, ierr := readIAMBody(r)
	if ierr != nil {
		return ierr
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return badIAMRequest("the request body is empty")
	}
	if err := json.Unmarshal(b, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return badIAMRequest("the request body's field %s must not be a JSON %s", typeErr.Field, typeErr.Value)
		}
		return badIAMRequest("the request body is not a valid JSON object")
	}
	return nil
}

// idTokenRequest is the body of POST PathIDToken.
type idTokenRequest struct {
	Auth *struct {
		IDToken *struct {
			ID string `json:"id"`
		} `json:"id_token"`
		Scope *struct {
			Project *scopeRef `json:"project"`
			Domain  *scopeRef `json:"domain"`
		} `json:"scope"`
	} `json:"auth"`
}

type scopeRef struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

type tokenInfo struct {
	Token struct {
		ExpiresAt string    `json:"expires_at"`
		IssuedAt  string    `json:"issued_at"`
		Methods   []string  `json:"methods"`
		Project   *scopeRef `json:"project,omitempty"`
		User      tokenUser `json:"user"`
	} `json:"token"`
}

type tokenUser struct {
	Name       string `json:"name"`
	Federation struct {
		IdentityProvider struct {
			ID string `json:"id"`
		} `json:"identity_provider"`
		Protocol struct {
			ID string `json:"id"`
		} `json:"protocol"`
	} `json:"OS-FEDERATION"`
}

// scopeProject returns the project of the request's scope, "" for an unscoped request.
func (q *idTokenRequest) scopeProject() (string, *iamError) {
	if q.Auth == nil || q.Auth.IDToken == nil || q.Auth.IDToken.ID == "" {
		return "", badIAMRequest("auth.id_token.id is missing")
	}
	s := q.Auth.Scope
	switch {
	case s == nil || (s.Project == nil && s.Domain == nil):
		return "", nil
	case s.Domain != nil:
		return "", badIAMRequest("auth.scope.domain is not supported: scope the token to a project")
	case s.Project.ID != "":
		return s.Project.ID, nil
	case s.Project.Name != "":
		return s.Project.Name, nil // project names are project IDs here
	default:
		return "", badIAMRequest("auth.scope.project needs an id")
	}
}

// exchangeIDToken serves POST PathIDToken.
func (i *IAM) exchangeIDToken(r *http.Request) (iamReply, *iamError) {
	if r.Method != http.MethodPost {
		return iamReply{}, methodNotAllowed(r, http.MethodPost)
	}
	idpID := strings.TrimSpace(r.Header.Get(HeaderIdpID))
	if idpID == "" {
		return iamReply{}, badIAMRequest("header %s is missing", HeaderIdpID)
	}
	var q idTokenRequest
	if ierr := decodeIAMBody(r, &q); ierr != nil {
		return iamReply{}, ierr
	}
	project, ierr := q.scopeProject()
	if ierr != nil {
		return iamReply{}, ierr
	}
	now := i.now()
	i.mu.Lock()
	idp, ok := i.idps[idpID]
	unscopedOnly := i.unscopedOnly
	i.mu.Unlock()
	if unscopedOnly && q.Auth.Scope != nil {
		return iamReply{}, badIAMRequest("auth.scope is not accepted: exchange the id_token for an unscoped token")
	}
	if !ok {
		return iamReply{}, iamErr(http.StatusNotFound, CodeUnknownIdP, "identity provider %q does not exist", idpID)
	}
	i.remember(q.Auth.IDToken.ID)
	sub, ierr := verifyIDToken(q.Auth.IDToken.ID, idp, now)
	if ierr != nil {
		return iamReply{}, ierr
	}

	i.mu.Lock()
	allowed, ok := i.rules[ruleKey{idpID, sub}]
	if !ok {
		i.mu.Unlock()
		return iamReply{}, iamErr(http.StatusForbidden, CodeNoRule, "no conversion rule of identity provider %s maps subject %q", idpID, sub)
	}
	if project != "" && !slices.Contains(allowed, project) {
		i.mu.Unlock()
		return iamReply{}, iamErr(http.StatusForbidden, CodeProjectNotAllowed, "subject %q of identity provider %s may not get credentials for project %q", sub, idpID, project)
	}
	projects := slices.Clone(allowed)
	if project != "" {
		projects = []string{project}
	}
	token := "MII" + randomText(96)
	i.remember(token)
	expiresAt := ceilSecond(now.Add(i.lifetime))
	i.pruneTokens(now)
	i.tokens[token] = issuedToken{projects: projects, expiresAt: expiresAt}
	i.stats.IDTokenExchanges++
	trusted := slices.Clone(i.trusted)
	i.mu.Unlock()

	var info tokenInfo
	info.Token.ExpiresAt = expiresAt.UTC().Format(TimeFormat)
	info.Token.IssuedAt = now.UTC().Format(TimeFormat)
	info.Token.Methods = []string{"mapped"}
	info.Token.User.Name = sub
	info.Token.User.Federation.IdentityProvider.ID = idpID
	info.Token.User.Federation.Protocol.ID = "oidc"
	if project != "" {
		info.Token.Project = &scopeRef{ID: project, Name: project}
		for _, e := range trusted {
			if e.ProjectID() == project {
				e.AddTemporaryToken(token, expiresAt)
			}
		}
	}
	return iamReply{
		status:      http.StatusCreated,
		contentType: contentTypeJSON,
		header:      map[string]string{HeaderSubjectToken: token, HeaderRequestID: randomHex(16)},
		body:        wire.Marshal(info),
	}, nil
}

// securityTokensRequest is the body of POST PathSecurityTokens.
type securityTokensRequest struct {
	Auth *struct {
		Identity *struct {
			Methods []string `json:"methods"`
			Token   *struct {
				ID              string `json:"id"`
				DurationSeconds int64  `json:"duration_seconds"`
			} `json:"token"`
		} `json:"identity"`
	} `json:"auth"`
}

// TemporaryCredential is a temporary AK/SK as IAM's securitytokens, the metadata service's
// securitykey and the pod identity endpoint answer with it, under "credential" (or
// "credentials" for pod identity); ExpiresAt is in TimeFormat.
type TemporaryCredential struct {
	Access        string `json:"access"`
	Secret        string `json:"secret"`
	SecurityToken string `json:"securitytoken"`
	ExpiresAt     string `json:"expires_at"`
}

// securityTokens serves POST PathSecurityTokens.
func (i *IAM) securityTokens(r *http.Request) (iamReply, *iamError) {
	if r.Method != http.MethodPost {
		return iamReply{}, methodNotAllowed(r, http.MethodPost)
	}
	var q securityTokensRequest
	if ierr := decodeIAMBody(r, &q); ierr != nil {
		return iamReply{}, ierr
	}
	if q.Auth == nil || q.Auth.Identity == nil {
		return iamReply{}, badIAMRequest("auth.identity is missing")
	}
	id := q.Auth.Identity
	if !slices.Contains(id.Methods, "token") {
		return iamReply{}, badIAMRequest("auth.identity.methods must be [\"token\"]")
	}
	var token string
	var duration int64
	if id.Token != nil {
		token, duration = id.Token.ID, id.Token.DurationSeconds
	}
	if token == "" {
		token = r.Header.Get(kmstest.HeaderAuthToken)
	}
	if token == "" {
		return iamReply{}, badIAMRequest("no IAM token: send auth.identity.token.id or %s", kmstest.HeaderAuthToken)
	}
	now := i.now()
	i.mu.Lock()
	tok, ok := i.tokens[token]
	if !ok {
		i.mu.Unlock()
		return iamReply{}, iamErr(http.StatusUnauthorized, CodeInvalidToken, "the IAM token is not valid")
	}
	if expired(tok.expiresAt, now) {
		i.mu.Unlock()
		return iamReply{}, iamErr(http.StatusUnauthorized, CodeTokenExpired, "the IAM token expired at %s", tok.expiresAt.UTC().Format(time.RFC3339))
	}
	lifetime := i.lifetime
	if duration > 0 && duration < int64(lifetime/time.Second) {
		lifetime = time.Duration(duration) * time.Second
	}
	if left := tok.expiresAt.Sub(now); left < lifetime {
		lifetime = left
	}
	i.stats.SecurityTokens++
	trusted := slices.Clone(i.trusted)
	i.mu.Unlock()
	c := i.issueCredential(trusted, tok.projects, ceilSecond(now.Add(lifetime)))
	return iamReply{
		status:      http.StatusCreated,
		contentType: contentTypeJSON,
		header:      map[string]string{HeaderRequestID: randomHex(16)},
		body:        wire.Marshal(map[string]TemporaryCredential{"credential": c}),
	}, nil
}

// metadataToken serves PUT PathMetadataToken.
func (i *IAM) metadataToken(r *http.Request) (iamReply, *iamError) {
	i.mu.Lock()
	tokenless := i.tokenless
	i.mu.Unlock()
	switch {
	case tokenless:
		return iamReply{}, iamErr(http.StatusMethodNotAllowed, "", "this metadata service issues no session tokens")
	case r.Method != http.MethodPut:
		return iamReply{}, methodNotAllowed(r, http.MethodPut)
	}
	v := strings.TrimSpace(r.Header.Get(HeaderMetadataTokenTTL))
	ttl, err := strconv.Atoi(v)
	if v == "" || err != nil || ttl < 1 || ttl > MaxMetadataTokenTTL {
		return iamReply{}, iamErr(http.StatusBadRequest, "", "%s must be an integer from 1 to %d", HeaderMetadataTokenTTL, MaxMetadataTokenTTL)
	}
	now := i.now()
	token := randomText(32)
	i.remember(token)
	i.mu.Lock()
	i.pruneTokens(now)
	i.metaTokens[token] = now.Add(time.Duration(ttl) * time.Second)
	i.stats.MetadataTokens++
	i.mu.Unlock()
	return iamReply{status: http.StatusOK, contentType: "text/plain", body: []byte(token)}, nil
}

// securityKey serves GET PathSecurityKey.
func (i *IAM) securityKey(r *http.Request) (iamReply, *iamError) {
	if r.Method != http.MethodGet {
		return iamReply{}, methodNotAllowed(r, http.MethodGet)
	}
	token := r.Header.Get(HeaderMetadataToken)
	now := i.now()
	i.mu.Lock()
	expiresAt, ok := i.metaTokens[token]
	var ierr *iamError
	switch {
	case token == "" && !i.tokenless:
		ierr = iamErr(http.StatusUnauthorized, "", "%s is missing: get one with PUT %s", HeaderMetadataToken, PathMetadataToken)
	case token == "":
	case !ok:
		ierr = iamErr(http.StatusUnauthorized, "", "the metadata token is not valid")
	case expired(expiresAt, now):
		ierr = iamErr(http.StatusUnauthorized, "", "the metadata token has expired")
	case len(i.agency) == 0:
		ierr = iamErr(http.StatusUnauthorized, "", MetadataAgencyError)
	}
	if ierr != nil {
		i.mu.Unlock()
		return iamReply{}, ierr
	}
	projects := slices.Clone(i.agency)
	lifetime := i.lifetime
	i.stats.MetadataCredentials++
	trusted := slices.Clone(i.trusted)
	i.mu.Unlock()
	c := i.issueCredential(trusted, projects, ceilSecond(now.Add(lifetime)))
	return iamReply{status: http.StatusOK, contentType: contentTypeJSON, body: wire.Marshal(map[string]TemporaryCredential{"credential": c})}, nil
}

// podIdentity serves POST PathPodIdentity.
func (i *IAM) podIdentity(r *http.Request) (iamReply, *iamError) {
	if r.Method != http.MethodPost {
		return iamReply{}, methodNotAllowed(r, http.MethodPost)
	}
	if _, ierr := readIAMBody(r); ierr != nil {
		return iamReply{}, ierr
	}
	auth := strings.TrimSpace(r.Header.Get("Authorization"))
	now := i.now()
	i.mu.Lock()
	want, projects, lifetime := i.podToken, slices.Clone(i.podProjects), i.lifetime
	trusted := slices.Clone(i.trusted)
	var ierr *iamError
	switch {
	case auth == "":
		ierr = iamErr(http.StatusUnauthorized, CodePodIdentityUnauthorized, "the Authorization header is missing")
	case want == "" || !hmac.Equal([]byte(auth), []byte(want)):
		ierr = iamErr(http.StatusUnauthorized, CodePodIdentityUnauthorized, "the Authorization token is not valid")
	case len(projects) == 0:
		ierr = iamErr(http.StatusForbidden, CodeNoPodIdentity, "the pod's service account has no pod identity association")
	default:
		i.stats.PodIdentityCredentials++
	}
	i.mu.Unlock()
	if ierr != nil {
		return iamReply{}, ierr
	}
	c := i.issueCredential(trusted, projects, ceilSecond(now.Add(lifetime)))
	return iamReply{status: http.StatusOK, contentType: contentTypeJSON, body: wire.Marshal(map[string]TemporaryCredential{"credentials": c})}, nil
}

// issueCredential makes a new temporary AK/SK and registers it with the trusted Emulators of
// the projects.
func (i *IAM) issueCredential(trusted []*kmstest.Emulator, projects []string, expiresAt time.Time) TemporaryCredential {
	c := TemporaryCredential{
		Access:        rand.Text()[:20],
		Secret:        rand.Text() + rand.Text()[:14],
		SecurityToken: i.newSecurityToken(),
		ExpiresAt:     expiresAt.UTC().Format(TimeFormat),
	}
	i.remember(c.Secret, c.SecurityToken)
	for _, e := range trusted {
		if slices.Contains(projects, e.ProjectID()) {
			e.AddTemporaryAKSK(c.Access, c.Secret, c.SecurityToken, expiresAt)
		}
	}
	return c
}

// newSecurityToken returns a random security token of the length SetSecurityTokenLength set.
func (i *IAM) newSecurityToken() string {
	i.mu.Lock()
	n := i.securityTokenLength
	i.mu.Unlock()
	if n <= 0 {
		return randomText(192)
	}
	return randomText(n)[:n]
}

// pruneTokens forgets IAM and metadata tokens that expired more than expiredRetention ago.
// The caller holds i.mu.
func (i *IAM) pruneTokens(now time.Time) {
	limit := now.Add(-expiredRetention)
	for k, t := range i.tokens {
		if t.expiresAt.Before(limit) {
			delete(i.tokens, k)
		}
	}
	for k, t := range i.metaTokens {
		if t.Before(limit) {
			delete(i.metaTokens, k)
		}
	}
}

// ceilSecond rounds t up to a whole second, so that the expiry written in an answer is the
// one registered.
func ceilSecond(t time.Time) time.Time {
	s := t.Truncate(time.Second)
	if s.Before(t) {
		s = s.Add(time.Second)
	}
	return s
}

// randomText returns n random bytes in base64url without padding.
func randomText(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails
	return base64.RawURLEncoding.EncodeToString(b)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
