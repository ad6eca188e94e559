package kmstest

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
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The paths IAM serves (see IAM.ServeHTTP).
const (
	// IAMPathIDToken exchanges an OIDC id_token for an IAM token (CreateTokenWithIdToken).
	IAMPathIDToken = "/v3.0/OS-AUTH/id-token/tokens"
	// IAMPathSecurityTokens exchanges an IAM token for temporary AK/SK
	// (CreateTemporaryAccessKeyByToken).
	IAMPathSecurityTokens = "/v3.0/OS-CREDENTIAL/securitytokens"
	// IAMPathMetadataToken issues a session token of the ECS metadata service.
	IAMPathMetadataToken = "/meta-data/latest/api/token"
	// IAMPathSecurityKey issues the node agency's temporary AK/SK (ECS metadata service).
	IAMPathSecurityKey = "/openstack/latest/securitykey"
	// IAMPathPodIdentity issues a pod's temporary AK/SK (CCE pod identity).
	IAMPathPodIdentity = "/v1/pod-identity/credentials"
	// IAMAdminPrefix is where IAM's admin API lives (see IAM.AdminHandler).
	IAMAdminPrefix = "/admin/iam/"
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
	// DefaultCredentialLifetime is how long what IAM issues stays valid unless
	// WithCredentialLifetime or SetCredentialLifetime says otherwise.
	DefaultCredentialLifetime = time.Hour
	// MaxMetadataTokenTTL is the longest X-Metadata-Token-Ttl-Seconds accepted, in seconds.
	MaxMetadataTokenTTL = 21600
	// MetadataAgencyError is the message of the metadata service when the node has no agency;
	// the SDK recognises the answer by it.
	MetadataAgencyError = "Please configure Cloud Service Agency first"
	// IAMTimeFormat is the format of expires_at and issued_at in IAM's answers (UTC).
	IAMTimeFormat = "2006-01-02T15:04:05.000000Z"
)

// The routes of IAMFault.Route.
const (
	IAMRouteIDToken        = "id-token"       // POST IAMPathIDToken
	IAMRouteSecurityTokens = "securitytokens" // POST IAMPathSecurityTokens
	IAMRouteMetadata       = "metadata"       // both metadata routes
	IAMRouteMetadataToken  = "metadata-token" // PUT IAMPathMetadataToken only
	IAMRouteSecurityKey    = "securitykey"    // GET IAMPathSecurityKey only
	IAMRoutePodIdentity    = "pod-identity"   // POST IAMPathPodIdentity
)

// The error codes of IAM's answers on the id-token, securitytokens and pod identity routes;
// the package comment lists their statuses and causes. An injected fault answers its status
// with the code "IAM.0" followed by the status, such as "IAM.0503".
const (
	IAMCodeBadRequest              = "IAM.0001"
	IAMCodeUnknownIdP              = "IAM.0002"
	IAMCodeMethodNotAllowed        = "IAM.0003"
	IAMCodeUnknownPath             = "IAM.0004"
	IAMCodeMalformedJWT            = "IAM.0101"
	IAMCodeBadSignature            = "IAM.0102"
	IAMCodeUnsupportedAlg          = "IAM.0103"
	IAMCodeJWTExpired              = "IAM.0104"
	IAMCodeJWTNotYetValid          = "IAM.0105"
	IAMCodeWrongIssuer             = "IAM.0106"
	IAMCodeWrongAudience           = "IAM.0107"
	IAMCodeNoRule                  = "IAM.0201"
	IAMCodeProjectNotAllowed       = "IAM.0202"
	IAMCodeInvalidToken            = "IAM.0301"
	IAMCodeTokenExpired            = "IAM.0302"
	IAMCodePodIdentityUnauthorized = "IAM.0401"
	IAMCodeNoPodIdentity           = "IAM.0402"
)

// IAM emulates the parts of Huawei Cloud IAM, the ECS metadata service and the CCE pod identity
// endpoint that issue temporary credentials; the credentials it issues for a project are accepted
// by the Emulators it trusts for that project.
//
// It is safe for concurrent use, also while requests are served.
type IAM struct {
	mu          sync.Mutex
	now         func() time.Time
	lifetime    time.Duration
	trusted     []*Emulator
	idps        map[string]*idpEntry
	rules       map[ruleKey][]string
	agency      []string
	podToken    string
	podProjects []string
	// unscopedOnly refuses id-token exchanges that ask for a scope; tokenless serves the
	// metadata service of a host without session tokens.
	unscopedOnly bool
	tokenless    bool
	// securityTokenLength, when positive, is the length of the security tokens issued.
	securityTokenLength int
	tokens              map[string]issuedToken // IAM tokens by value
	metaTokens          map[string]time.Time   // metadata tokens -> expiry
	faults              []IAMFault
	stats               IAMStats
	handler             http.Handler
	logger              *slog.Logger

	// secrets holds every id_token received and every token and key issued, for leak tests.
	secretsMu sync.Mutex
	secrets   []string
}

// Secrets returns every secret IAM has seen or made: the id_tokens it was sent, and the IAM
// tokens, metadata tokens, secret keys and security tokens it issued. A test can then check that
// none of them reached a log, an event, a status or an error.
func (i *IAM) Secrets() []string {
	i.secretsMu.Lock()
	defer i.secretsMu.Unlock()
	return slices.Clone(i.secrets)
}

func (i *IAM) remember(secrets ...string) {
	i.secretsMu.Lock()
	defer i.secretsMu.Unlock()
	i.secrets = append(i.secrets, secrets...)
}

// IAMOption configures NewIAM.
type IAMOption func(*IAM)

// WithIAMClock sets IAM's clock (default time.Now): it checks exp, nbf and iat of id_tokens and
// the expiry of IAM and metadata tokens, and dates what IAM issues.
func WithIAMClock(now func() time.Time) IAMOption {
	return func(i *IAM) {
		if now != nil {
			i.now = now
		}
	}
}

// WithIAMLogger logs one line per request to IAM's routes (method, path, route, status, error
// code, duration). Secrets are never logged. The default is no logging.
func WithIAMLogger(l *slog.Logger) IAMOption { return func(i *IAM) { i.logger = l } }

// WithCredentialLifetime sets the initial credential lifetime (see SetCredentialLifetime).
func WithCredentialLifetime(d time.Duration) IAMOption {
	return func(i *IAM) { i.SetCredentialLifetime(d) }
}

// IdentityProvider is an OIDC identity provider IAM trusts. In JSON (the admin API),
// signing_key is a string holding the JWKS document, as IAM's OIDC configuration takes it; a
// JWKS object, or the base64 a []byte would marshal to, is accepted too.
type IdentityProvider struct {
	ID         string   `json:"id"`
	Issuer     string   `json:"issuer"`      // must equal the JWT's iss
	ClientIDs  []string `json:"client_ids"`  // the JWT's aud must contain one of them
	SigningKey []byte   `json:"signing_key"` // a JWKS document (JSON), as IAM's OIDC config takes it: RSA (RS256) and EC P-256 (ES256) keys
}

type identityProviderJSON struct {
	ID         string          `json:"id"`
	Issuer     string          `json:"issuer"`
	ClientIDs  []string        `json:"client_ids"`
	SigningKey json.RawMessage `json:"signing_key"`
}

// MarshalJSON writes signing_key as a JSON string holding the JWKS document.
func (p IdentityProvider) MarshalJSON() ([]byte, error) {
	key, err := json.Marshal(string(p.SigningKey))
	if err != nil {
		return nil, fmt.Errorf("marshal signing_key: %w", err)
	}
	return json.Marshal(identityProviderJSON{ID: p.ID, Issuer: p.Issuer, ClientIDs: p.ClientIDs, SigningKey: key})
}

// UnmarshalJSON reads signing_key as a string holding the JWKS document, a JWKS object, or the
// base64 of the document. Unknown fields are refused.
func (p *IdentityProvider) UnmarshalJSON(b []byte) error {
	var v identityProviderJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("identity provider: %w", err)
	}
	*p = IdentityProvider{ID: v.ID, Issuer: v.Issuer, ClientIDs: v.ClientIDs}
	raw := bytes.TrimSpace(v.SigningKey)
	switch {
	case len(raw) == 0 || string(raw) == "null":
	case raw[0] == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return fmt.Errorf("identity provider: signing_key: %w", err)
		}
		p.SigningKey = []byte(s)
		if t := strings.TrimSpace(s); t != "" && t[0] != '{' {
			if doc, err := base64.StdEncoding.DecodeString(t); err == nil {
				p.SigningKey = doc
			}
		}
	default:
		p.SigningKey = slices.Clone(raw)
	}
	return nil
}

type idpEntry struct {
	IdentityProvider
	keys []verifyKey
}

type ruleKey struct{ idp, subject string }

// IAMRule is a conversion rule (see IAM.Allow).
type IAMRule struct {
	IdP      string   `json:"idp"`
	Subject  string   `json:"subject"`
	Projects []string `json:"projects"`
}

// issuedToken is an IAM token IAM issued.
type issuedToken struct {
	projects  []string // the scope project, or for an unscoped token the rule's projects
	expiresAt time.Time
}

// IAMFault makes IAM answer requests of a route with an error status.
type IAMFault struct {
	Route  string `json:"route"`  // IAMRouteIDToken, IAMRouteSecurityTokens, IAMRouteMetadata (both metadata routes), IAMRouteMetadataToken, IAMRouteSecurityKey, IAMRoutePodIdentity
	Status int    `json:"status"` // e.g. 500, 503
	Count  int    `json:"count"`  // how many requests it answers; 0 = until cleared
	// Echo makes the error message repeat the credential the request carried (the id_token,
	// the IAM token, the Authorization or X-Metadata-Token header), every character escaped as
	// \uXXXX, as a service that echoes its input JSON-encoded might.
	Echo bool `json:"echo,omitempty"`
}

// IAMStats counts what IAM answered. Admin requests are not counted, nor requests for paths
// IAM does not serve.
type IAMStats struct {
	IDTokenExchanges       int64 `json:"id_token_exchanges"`       // successful id-token exchanges (201)
	IDTokenRefusals        int64 `json:"id_token_refusals"`        // id-token requests answered with an error
	SecurityTokens         int64 `json:"security_tokens"`          // successful securitytokens calls
	MetadataTokens         int64 `json:"metadata_tokens"`          // successful PUT api/token
	MetadataCredentials    int64 `json:"metadata_credentials"`     // successful GET securitykey
	PodIdentityCredentials int64 `json:"pod_identity_credentials"` // successful pod identity calls
	Refusals               int64 `json:"refusals"`                 // every error answer, all routes
	FaultsApplied          int64 `json:"faults_applied"`           // answers given by injected faults
}

// NewIAM returns an IAM with no identity providers, rules, node agency or pod identity, a
// credential lifetime of DefaultCredentialLifetime, trusted by no Emulator.
func NewIAM(opts ...IAMOption) *IAM {
	i := &IAM{
		now:        time.Now,
		lifetime:   DefaultCredentialLifetime,
		idps:       make(map[string]*idpEntry),
		rules:      make(map[ruleKey][]string),
		tokens:     make(map[string]issuedToken),
		metaTokens: make(map[string]time.Time),
	}
	for _, opt := range opts {
		opt(i)
	}
	i.handler = byPrefix(IAMAdminPrefix, i.AdminHandler(), http.HandlerFunc(i.ServeHTTP))
	return i
}

// NewIAMServer serves i.Handler on 127.0.0.1 at a random port over plain HTTP. Close it when
// done.
func NewIAMServer(i *IAM) *httptest.Server { return httptest.NewServer(i.Handler()) }

// NewIAMTLSServer is NewIAMServer over HTTPS with a self-signed certificate for 127.0.0.1;
// trust it with the server's Client or Certificate.
func NewIAMTLSServer(i *IAM) *httptest.Server { return httptest.NewTLSServer(i.Handler()) }

// SetCredentialLifetime sets the lifetime of everything IAM issues from now on: IAM tokens,
// temporary AK/SK, metadata and pod identity credentials (a securitytokens duration_seconds
// shorter than it wins). A lifetime that is not positive is ignored.
func (i *IAM) SetCredentialLifetime(d time.Duration) {
	if d <= 0 {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.lifetime = d
}

// CredentialLifetime returns the current credential lifetime.
func (i *IAM) CredentialLifetime() time.Duration {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.lifetime
}

// Trust makes the credentials IAM issues from now on for project P valid in every trusted
// Emulator whose ProjectID() == P: they are registered with AddTemporaryAKSK and
// AddTemporaryToken, with their expiry.
func (i *IAM) Trust(kms ...*Emulator) {
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, e := range kms {
		if e != nil && !slices.Contains(i.trusted, e) {
			i.trusted = append(i.trusted, e)
		}
	}
}

// PutIdentityProvider adds or replaces an identity provider. It needs an ID, an Issuer, at
// least one non-empty client ID and a valid JWKS; an error names what is wrong.
func (i *IAM) PutIdentityProvider(p IdentityProvider) error {
	switch {
	case strings.TrimSpace(p.ID) == "":
		return errors.New("identity provider: id is empty")
	case p.Issuer == "":
		return fmt.Errorf("identity provider %s: issuer is empty", p.ID)
	case len(p.ClientIDs) == 0:
		return fmt.Errorf("identity provider %s: client_ids is empty", p.ID)
	case slices.Contains(p.ClientIDs, ""):
		return fmt.Errorf("identity provider %s: client_ids holds an empty client ID", p.ID)
	}
	keys, err := parseJWKS(p.SigningKey)
	if err != nil {
		return fmt.Errorf("identity provider %s: signing_key: %w", p.ID, err)
	}
	entry := &idpEntry{
		IdentityProvider: IdentityProvider{
			ID: p.ID, Issuer: p.Issuer, ClientIDs: slices.Clone(p.ClientIDs), SigningKey: slices.Clone(p.SigningKey),
		},
		keys: keys,
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.idps[p.ID] = entry
	return nil
}

// DeleteIdentityProvider forgets an identity provider; its rules stay.
func (i *IAM) DeleteIdentityProvider(id string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	delete(i.idps, id)
}

// IdentityProviders returns the identity providers, sorted by ID.
func (i *IAM) IdentityProviders() []IdentityProvider {
	i.mu.Lock()
	defer i.mu.Unlock()
	out := make([]IdentityProvider, 0, len(i.idps))
	for _, p := range i.idps {
		out = append(out, IdentityProvider{
			ID: p.ID, Issuer: p.Issuer, ClientIDs: slices.Clone(p.ClientIDs), SigningKey: slices.Clone(p.SigningKey),
		})
	}
	slices.SortFunc(out, func(a, b IdentityProvider) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Allow sets the conversion rule of an identity provider's subject (the id_token's sub, such
// as "system:serviceaccount:ns:sa"): its id_tokens may get credentials for these projects. It
// replaces the previous rule of the pair; a rule without projects allows none.
func (i *IAM) Allow(idpID, subject string, projects ...string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.rules[ruleKey{idpID, subject}] = slices.Clone(projects)
}

// Revoke deletes the conversion rule of an identity provider's subject. Credentials issued
// before stay valid until they expire.
func (i *IAM) Revoke(idpID, subject string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	delete(i.rules, ruleKey{idpID, subject})
}

// Rules returns the conversion rules, sorted by identity provider and subject.
func (i *IAM) Rules() []IAMRule {
	i.mu.Lock()
	defer i.mu.Unlock()
	out := make([]IAMRule, 0, len(i.rules))
	for k, projects := range i.rules {
		out = append(out, IAMRule{IdP: k.idp, Subject: k.subject, Projects: slices.Clone(projects)})
	}
	slices.SortFunc(out, func(a, b IAMRule) int {
		if c := strings.Compare(a.IdP, b.IdP); c != 0 {
			return c
		}
		return strings.Compare(a.Subject, b.Subject)
	})
	return out
}

// SetNodeAgency sets the node's agency: credentials from the metadata service are valid in
// these projects. No projects means the node has no agency.
func (i *IAM) SetNodeAgency(projects ...string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.agency = slices.Clone(projects)
}

// NodeAgency returns the projects of the node's agency.
func (i *IAM) NodeAgency() []string {
	i.mu.Lock()
	defer i.mu.Unlock()
	return slices.Clone(i.agency)
}

// SetPodIdentity sets the pod identity association: the pod identity endpoint accepts an
// Authorization header equal to token (both trimmed of white space; an empty token accepts
// nothing) and issues credentials valid in these projects. No projects means no association:
// the right token then gets 403.
func (i *IAM) SetPodIdentity(token string, projects ...string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.podToken = strings.TrimSpace(token)
	i.podProjects = slices.Clone(projects)
}

// SetSecurityTokenLength makes the security tokens issued from now on n characters long, as a
// misbehaving IAM might answer; 0 restores the usual 256.
func (i *IAM) SetSecurityTokenLength(n int) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.securityTokenLength = max(n, 0)
}

// RefuseScopedTokens makes the id-token route answer 400 IAM.0001 to a request that asks for a
// scope (auth.scope), as an IAM that takes only the unscoped exchange of the official SDK would;
// false accepts both again.
func (i *IAM) RefuseScopedTokens(refuse bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.unscopedOnly = refuse
}

// SetMetadataTokenless makes the metadata service that of a host without session tokens: PUT
// IAMPathMetadataToken answers 405, and GET IAMPathSecurityKey needs no X-Metadata-Token (one
// sent is still checked). false restores session tokens.
func (i *IAM) SetMetadataTokenless(tokenless bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.tokenless = tokenless
}

// InjectFault queues a fault: the next Count requests of its Route (every one when Count is
// 0, until ClearFaults) are answered with Status before anything else is checked. A Status
// outside 400-599 means 500. A fault with an unknown Route or a negative Count is ignored.
// Faults of one route act in the order they were queued.
func (i *IAM) InjectFault(f IAMFault) {
	if !validIAMRoute(f.Route) || f.Count < 0 {
		return
	}
	if f.Status < 400 || f.Status > 599 {
		f.Status = http.StatusInternalServerError
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.faults = append(i.faults, f)
}

// Faults returns the pending faults, with what is left of their Count.
func (i *IAM) Faults() []IAMFault {
	i.mu.Lock()
	defer i.mu.Unlock()
	return slices.Clone(i.faults)
}

// ClearFaults drops every pending fault.
func (i *IAM) ClearFaults() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.faults = nil
}

// Stats returns the counters.
func (i *IAM) Stats() IAMStats {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.stats
}

// ResetStats zeroes the counters.
func (i *IAM) ResetStats() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.stats = IAMStats{}
}

// Handler serves IAM's routes (ServeHTTP) and, under IAMAdminPrefix, its admin API
// (AdminHandler).
func (i *IAM) Handler() http.Handler { return i.handler }

func validIAMRoute(route string) bool {
	switch route {
	case IAMRouteIDToken, IAMRouteSecurityTokens, IAMRouteMetadata, IAMRouteMetadataToken, IAMRouteSecurityKey, IAMRoutePodIdentity:
		return true
	default:
		return false
	}
}

// takeFault returns the fault due for a request of one of routes, counting it down. The caller
// holds i.mu.
func (i *IAM) takeFault(routes ...string) (IAMFault, bool) {
	for n, f := range i.faults {
		if !slices.Contains(routes, f.Route) {
			continue
		}
		if f.Count > 0 {
			i.faults[n].Count--
			if i.faults[n].Count == 0 {
				i.faults = slices.Delete(i.faults, n, n+1)
			}
		}
		i.stats.FaultsApplied++
		return f, true
	}
	return IAMFault{}, false
}

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
	case IAMPathIDToken:
		route, handle = IAMRouteIDToken, i.exchangeIDToken
	case IAMPathSecurityTokens:
		route, handle = IAMRouteSecurityTokens, i.securityTokens
	case IAMPathMetadataToken:
		route, detail, handle = IAMRouteMetadata, IAMRouteMetadataToken, i.metadataToken
	case IAMPathSecurityKey:
		route, detail, handle = IAMRouteMetadata, IAMRouteSecurityKey, i.securityKey
	case IAMPathPodIdentity:
		route, handle = IAMRoutePodIdentity, i.podIdentity
	default:
		writeIAMError(w, "", iamErr(http.StatusNotFound, IAMCodeUnknownPath, "no IAM API at %s", r.URL.Path))
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
		if route == IAMRouteIDToken {
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
		if route == IAMRouteIDToken {
			i.stats.IDTokenRefusals++
		}
		i.mu.Unlock()
		i.log(r, route, ierr.status, ierr.code, time.Since(start))
		writeIAMError(w, route, ierr)
		return
	}
	i.log(r, route, rep.status, "", time.Since(start))
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
	for _, h := range []string{"Authorization", HeaderMetadataToken, HeaderAuthToken} {
		if v := r.Header.Get(h); v != "" {
			return v
		}
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, MaxBodyBytes))
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
	write(w, reply{status: status, contentType: contentTypeJSON, body: []byte(body)})
}

func writeIAMError(w http.ResponseWriter, route string, e *iamError) {
	var body []byte
	if route == IAMRouteMetadata {
		var b metadataErrorBody
		b.Error.Code, b.Error.Message = e.status, e.msg
		body = marshal(b)
	} else {
		body = marshal(iamErrorBody{Code: e.code, Message: e.msg})
	}
	write(w, reply{status: e.status, contentType: contentTypeJSON, body: body, allow: e.allow})
}

func methodNotAllowed(r *http.Request, want string) *iamError {
	e := iamErr(http.StatusMethodNotAllowed, IAMCodeMethodNotAllowed, "method %s not allowed on %s, use %s", r.Method, r.URL.Path, want)
	e.allow = want
	return e
}

func badIAMRequest(format string, args ...any) *iamError {
	return iamErr(http.StatusBadRequest, IAMCodeBadRequest, format, args...)
}

// readIAMBody reads a request body of at most MaxBodyBytes.
func readIAMBody(r *http.Request) ([]byte, *iamError) {
	b, err := io.ReadAll(io.LimitReader(r.Body, MaxBodyBytes+1))
	if err != nil {
		return nil, badIAMRequest("cannot read the request body")
	}
	if len(b) > MaxBodyBytes {
		return nil, badIAMRequest("the request body is longer than %d bytes", MaxBodyBytes)
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

// idTokenRequest is the body of POST IAMPathIDToken.
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

// exchangeIDToken serves POST IAMPathIDToken.
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
		return iamReply{}, iamErr(http.StatusNotFound, IAMCodeUnknownIdP, "identity provider %q does not exist", idpID)
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
		return iamReply{}, iamErr(http.StatusForbidden, IAMCodeNoRule, "no conversion rule of identity provider %s maps subject %q", idpID, sub)
	}
	if project != "" && !slices.Contains(allowed, project) {
		i.mu.Unlock()
		return iamReply{}, iamErr(http.StatusForbidden, IAMCodeProjectNotAllowed, "subject %q of identity provider %s may not get credentials for project %q", sub, idpID, project)
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
	info.Token.ExpiresAt = expiresAt.UTC().Format(IAMTimeFormat)
	info.Token.IssuedAt = now.UTC().Format(IAMTimeFormat)
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
		body:        marshal(info),
	}, nil
}

// securityTokensRequest is the body of POST IAMPathSecurityTokens.
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
// "credentials" for pod identity); ExpiresAt is in IAMTimeFormat.
type TemporaryCredential struct {
	Access        string `json:"access"`
	Secret        string `json:"secret"`
	SecurityToken string `json:"securitytoken"`
	ExpiresAt     string `json:"expires_at"`
}

// securityTokens serves POST IAMPathSecurityTokens.
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
		token = r.Header.Get(HeaderAuthToken)
	}
	if token == "" {
		return iamReply{}, badIAMRequest("no IAM token: send auth.identity.token.id or %s", HeaderAuthToken)
	}
	now := i.now()
	i.mu.Lock()
	tok, ok := i.tokens[token]
	if !ok {
		i.mu.Unlock()
		return iamReply{}, iamErr(http.StatusUnauthorized, IAMCodeInvalidToken, "the IAM token is not valid")
	}
	if expiredAt(tok.expiresAt, now) {
		i.mu.Unlock()
		return iamReply{}, iamErr(http.StatusUnauthorized, IAMCodeTokenExpired, "the IAM token expired at %s", tok.expiresAt.UTC().Format(time.RFC3339))
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
		body:        marshal(map[string]TemporaryCredential{"credential": c}),
	}, nil
}

// metadataToken serves PUT IAMPathMetadataToken.
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

// securityKey serves GET IAMPathSecurityKey.
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
		ierr = iamErr(http.StatusUnauthorized, "", "%s is missing: get one with PUT %s", HeaderMetadataToken, IAMPathMetadataToken)
	case token == "":
	case !ok:
		ierr = iamErr(http.StatusUnauthorized, "", "the metadata token is not valid")
	case expiredAt(expiresAt, now):
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
	return iamReply{status: http.StatusOK, contentType: contentTypeJSON, body: marshal(map[string]TemporaryCredential{"credential": c})}, nil
}

// podIdentity serves POST IAMPathPodIdentity.
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
		ierr = iamErr(http.StatusUnauthorized, IAMCodePodIdentityUnauthorized, "the Authorization header is missing")
	case want == "" || !hmac.Equal([]byte(auth), []byte(want)):
		ierr = iamErr(http.StatusUnauthorized, IAMCodePodIdentityUnauthorized, "the Authorization token is not valid")
	case len(projects) == 0:
		ierr = iamErr(http.StatusForbidden, IAMCodeNoPodIdentity, "the pod's service account has no pod identity association")
	default:
		i.stats.PodIdentityCredentials++
	}
	i.mu.Unlock()
	if ierr != nil {
		return iamReply{}, ierr
	}
	c := i.issueCredential(trusted, projects, ceilSecond(now.Add(lifetime)))
	return iamReply{status: http.StatusOK, contentType: contentTypeJSON, body: marshal(map[string]TemporaryCredential{"credentials": c})}, nil
}

// issueCredential makes a new temporary AK/SK and registers it with the trusted Emulators of
// the projects.
func (i *IAM) issueCredential(trusted []*Emulator, projects []string, expiresAt time.Time) TemporaryCredential {
	c := TemporaryCredential{
		Access:        rand.Text()[:20],
		Secret:        rand.Text() + rand.Text()[:14],
		SecurityToken: i.newSecurityToken(),
		ExpiresAt:     expiresAt.UTC().Format(IAMTimeFormat),
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
