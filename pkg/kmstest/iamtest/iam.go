package iamtest

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/internal/wire"
)

// DefaultCredentialLifetime is how long what IAM issues stays valid unless
// WithCredentialLifetime or SetCredentialLifetime says otherwise.
const DefaultCredentialLifetime = time.Hour

// IAM emulates the parts of Huawei Cloud IAM, the ECS metadata service and the CCE pod identity
// endpoint that issue temporary credentials; the credentials it issues for a project are accepted
// by the Emulators it trusts for that project.
//
// It is safe for concurrent use, also while requests are served.
type IAM struct {
	mu          sync.Mutex
	now         func() time.Time
	lifetime    time.Duration
	trusted     []*kmstest.Emulator
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
	faults              []Fault
	stats               Stats
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

// Option configures New.
type Option func(*IAM)

// WithClock sets IAM's clock (default time.Now): it checks exp, nbf and iat of id_tokens and
// the expiry of IAM and metadata tokens, and dates what IAM issues.
func WithClock(now func() time.Time) Option {
	return func(i *IAM) {
		if now != nil {
			i.now = now
		}
	}
}

// WithLogger logs one line per request to IAM's routes (method, path, route, status, error
// code, duration). Secrets are never logged. The default is no logging.
func WithLogger(l *slog.Logger) Option { return func(i *IAM) { i.logger = l } }

// WithCredentialLifetime sets the initial credential lifetime (see SetCredentialLifetime).
func WithCredentialLifetime(d time.Duration) Option {
	return func(i *IAM) { i.SetCredentialLifetime(d) }
}

type ruleKey struct{ idp, subject string }

// Rule is a conversion rule (see IAM.Allow).
type Rule struct {
	IdP      string   `json:"idp"`
	Subject  string   `json:"subject"`
	Projects []string `json:"projects"`
}

// issuedToken is an IAM token IAM issued.
type issuedToken struct {
	projects  []string // the scope project, or for an unscoped token the rule's projects
	expiresAt time.Time
}

// Fault makes IAM answer requests of a route with an error status.
type Fault struct {
	Route  string `json:"route"`  // RouteIDToken, RouteSecurityTokens, RouteMetadata (both metadata routes), RouteMetadataToken, RouteSecurityKey, RoutePodIdentity
	Status int    `json:"status"` // e.g. 500, 503
	Count  int    `json:"count"`  // how many requests it answers; 0 = until cleared
	// Echo makes the error message repeat the credential the request carried (the id_token,
	// the IAM token, the Authorization or X-Metadata-Token header), every character escaped as
	// \uXXXX, as a service that echoes its input JSON-encoded might.
	Echo bool `json:"echo,omitempty"`
}

// Stats counts what IAM answered. Admin requests are not counted, nor requests for paths
// IAM does not serve.
type Stats struct {
	IDTokenExchanges       int64 `json:"id_token_exchanges"`       // successful id-token exchanges (201)
	IDTokenRefusals        int64 `json:"id_token_refusals"`        // id-token requests answered with an error
	SecurityTokens         int64 `json:"security_tokens"`          // successful securitytokens calls
	MetadataTokens         int64 `json:"metadata_tokens"`          // successful PUT api/token
	MetadataCredentials    int64 `json:"metadata_credentials"`     // successful GET securitykey
	PodIdentityCredentials int64 `json:"pod_identity_credentials"` // successful pod identity calls
	Refusals               int64 `json:"refusals"`                 // every error answer, all routes
	FaultsApplied          int64 `json:"faults_applied"`           // answers given by injected faults
}

// New returns an IAM with no identity providers, rules, node agency or pod identity, a
// credential lifetime of DefaultCredentialLifetime, trusted by no Emulator.
func New(opts ...Option) *IAM {
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
	i.handler = wire.ByPrefix(AdminPrefix, i.AdminHandler(), http.HandlerFunc(i.ServeHTTP))
	return i
}

// NewServer serves i.Handler on 127.0.0.1 at a random port over plain HTTP. Close it when
// done.
func NewServer(i *IAM) *httptest.Server { return httptest.NewServer(i.Handler()) }

// NewTLSServer is NewServer over HTTPS with a self-signed certificate for 127.0.0.1;
// trust it with the server's Client or Certificate.
func NewTLSServer(i *IAM) *httptest.Server { return httptest.NewTLSServer(i.Handler()) }

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
func (i *IAM) Trust(kms ...*kmstest.Emulator) {
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
func (i *IAM) Rules() []Rule {
	i.mu.Lock()
	defer i.mu.Unlock()
	out := make([]Rule, 0, len(i.rules))
	for k, projects := range i.rules {
		out = append(out, Rule{IdP: k.idp, Subject: k.subject, Projects: slices.Clone(projects)})
	}
	slices.SortFunc(out, func(a, b Rule) int {
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
// PathMetadataToken answers 405, and GET PathSecurityKey needs no X-Metadata-Token (one
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
func (i *IAM) InjectFault(f Fault) {
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
func (i *IAM) Faults() []Fault {
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
func (i *IAM) Stats() Stats {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.stats
}

// ResetStats zeroes the counters.
func (i *IAM) ResetStats() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.stats = Stats{}
}

// Handler serves IAM's routes (ServeHTTP) and, under AdminPrefix, its admin API
// (AdminHandler).
func (i *IAM) Handler() http.Handler { return i.handler }

func validIAMRoute(route string) bool {
	switch route {
	case RouteIDToken, RouteSecurityTokens, RouteMetadata, RouteMetadataToken, RouteSecurityKey, RoutePodIdentity:
		return true
	default:
		return false
	}
}

// takeFault returns the fault due for a request of one of routes, counting it down. The caller
// holds i.mu.
func (i *IAM) takeFault(routes ...string) (Fault, bool) {
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
	return Fault{}, false
}
