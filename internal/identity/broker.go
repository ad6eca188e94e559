package identity

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// Refresh margins: credentials are refreshed a quarter of their lifetime before they expire, but
// never earlier than the official SDK's 40 minutes before.
const (
	maxRefreshMargin     = 40 * time.Minute
	refreshMarginDivisor = 4
)

// maxRetrySpacing bounds the wait between refreshes that failed while the credentials still
// work.
const maxRetrySpacing = 30 * time.Second

// The bounds of the cache, whose keys come from what namespace users write and whose values
// come from what an IAM endpoint answers.
const (
	// maxEntries is how many identities are cached; past it, the one used least recently is
	// dropped.
	maxEntries = 1000
	// idleLifetime is how long an identity nobody asks for stays cached.
	idleLifetime = time.Hour
	// MaxCredentialLifetime is the longest IAM issues temporary credentials for; credentials
	// said to live longer are refreshed after it.
	MaxCredentialLifetime = 24 * time.Hour
	// The longest credential fields kept: an IAM security token is a few kilobytes.
	maxKey           = 256
	maxSecurityToken = 16 << 10
)

// fetchTimeout bounds one refresh, which runs for every caller waiting for it and so is not
// tied to the context of the caller that started it.
const fetchTimeout = 30 * time.Second

// Temporary is a set of temporary credentials and when they stop working.
type Temporary struct {
	kms.Credentials
	ExpiresAt time.Time
}

// Source is one cloud identity: it names itself for the cache and fetches new credentials.
type Source interface {
	// Key identifies the identity and every setting its credentials depend on; never a secret.
	Key() string
	fetch(ctx context.Context, b *Broker) (Temporary, error)
}

// TokenMinter mints short-lived service account tokens (the TokenRequest API). It refuses a
// service account that has not opted in, and a token the Kubernetes API server would accept.
type TokenMinter interface {
	ServiceAccountToken(ctx context.Context, namespace, name string, audiences []string, lifetime time.Duration) (string, error)
}

// Broker hands out the credentials of keyless identities, cached per identity.
type Broker struct {
	// HTTP calls IAM and the pod identity endpoint; it must verify TLS.
	HTTP *http.Client
	// Metadata calls the ECS metadata service, which is plain http on a link-local address.
	Metadata *http.Client
	// MetadataEndpoint is the metadata service's base URL, http://169.254.169.254 on ECS.
	MetadataEndpoint string
	// PodIdentityURI and PodIdentityTokenFile are what CCE injects into a pod with a pod
	// identity association (HC_CONTAINER_CREDENTIALS_FULL_URI,
	// HC_CONTAINER_AUTHORIZATION_TOKEN_FILE); empty when the operator has none.
	PodIdentityURI       string
	PodIdentityTokenFile string
	// Tokens mints the service account tokens that workload identity exchanges.
	Tokens TokenMinter
	// Now is the clock the credentials' expiry is read against.
	Now func() time.Time
	// OnRefresh, when set, is told of every refresh: the method (workload_identity, node_agency
	// or pod_identity) and its error, nil on success.
	OnRefresh func(method string, err error)
	// AllowInsecureEndpoints lets the pod identity endpoint be plain http, as
	// --allow-insecure-endpoints does for every other endpoint.
	AllowInsecureEndpoints bool

	mu      sync.Mutex
	entries map[string]*entry
}

// entry is the cached credentials of one identity, and the refresh in progress, if any.
type entry struct {
	creds Temporary
	// refreshAt is when a refresh is due; until usableUntil, a failed refresh leaves the
	// credentials in use, and the next attempt waits until retryAt.
	refreshAt   time.Time
	usableUntil time.Time
	retryAt     time.Time
	// lastUsed is when a caller last asked for the credentials.
	lastUsed time.Time
	flight   *flight
}

// cached returns the entry's credentials when they need no refresh now. The caller holds b.mu.
func (e *entry) cached(now time.Time) (kms.Credentials, bool) {
	if e.creds.AccessKey == "" {
		return kms.Credentials{}, false
	}
	fresh := now.Before(e.refreshAt)
	backingOff := now.Before(e.retryAt) && now.Before(e.usableUntil)
	return e.creds.Credentials, fresh || backingOff
}

type flight struct {
	done  chan struct{}
	creds Temporary
	err   error
}

// Credentials returns valid credentials of src: cached ones until their refresh is due, else
// new ones. Callers of one identity share one refresh; each waits for it only as long as its own
// context allows. When a refresh fails while the cached credentials have more than half their
// refresh margin left, those are returned, and refreshes are tried again at most every 30
// seconds; after that, the failure is returned.
func (b *Broker) Credentials(ctx context.Context, src Source) (kms.Credentials, error) {
	key := src.Key()
	b.mu.Lock()
	if b.entries == nil {
		b.entries = map[string]*entry{}
	}
	now := b.Now()
	e := b.entries[key]
	if e == nil {
		b.makeRoom(now)
		e = &entry{}
		b.entries[key] = e
	}
	e.lastUsed = now
	if creds, ok := e.cached(now); ok {
		b.mu.Unlock()
		return creds, nil
	}
	f := e.flight
	if f == nil {
		f = &flight{done: make(chan struct{})}
		e.flight = f
		go b.refresh(context.WithoutCancel(ctx), src, e, f)
	}
	b.mu.Unlock()
	select {
	case <-f.done:
		return f.creds.Credentials, f.err
	case <-ctx.Done():
		return kms.Credentials{}, context.Cause(ctx)
	}
}

func (b *Broker) refresh(ctx context.Context, src Source, e *entry, f *flight) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	start := b.Now()
	creds, err := src.fetch(ctx, b)
	if err == nil {
		err = checkCredentials(creds, start, methodOf(src))
	}
	creds.ExpiresAt = minTime(creds.ExpiresAt, start.Add(MaxCredentialLifetime))
	if b.OnRefresh != nil {
		b.OnRefresh(strings.ReplaceAll(methodOf(src), " ", "_"), err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e.flight = nil
	switch {
	case err == nil:
		margin := refreshMargin(creds.ExpiresAt.Sub(start))
		e.creds, e.retryAt = creds, time.Time{}
		e.refreshAt, e.usableUntil = creds.ExpiresAt.Add(-margin), creds.ExpiresAt.Add(-margin/2)
		f.creds = creds
	case e.creds.AccessKey != "" && b.Now().Before(e.usableUntil):
		// The credentials in hand still work for a while: keep using them, and try again soon
		// rather than on every call.
		e.retryAt = b.Now().Add(min(maxRetrySpacing, e.usableUntil.Sub(e.refreshAt)/4))
		f.creds = e.creds
	default:
		// Failures are not cached: the next call tries again.
		f.err = err
	}
	close(f.done)
}

// checkCredentials refuses credentials that have already expired or that are larger than any
// IAM issues.
func checkCredentials(c Temporary, now time.Time, method string) error {
	msg := ""
	switch {
	case !c.ExpiresAt.After(now):
		msg = "the credentials received have already expired; check the clocks of the node and of the cloud"
	case len(c.AccessKey) > maxKey || len(c.SecretKey) > maxKey:
		msg = fmt.Sprintf("the credential's access key or secret key is longer than %d bytes", maxKey)
	case len(c.SecurityToken) > maxSecurityToken:
		msg = fmt.Sprintf("the credential's security token is longer than %d bytes", maxSecurityToken)
	default:
		return nil
	}
	return &Error{Method: method, Step: "credentials", Message: msg}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// makeRoom drops the entries nobody is refreshing whose credentials have expired or that nobody
// asked for in idleLifetime, such as those of deleted providers or edited audiences; then, while
// the cache is full, the entry used least recently. The caller holds b.mu.
func (b *Broker) makeRoom(now time.Time) {
	for key, e := range b.entries {
		if e.flight == nil && (!e.creds.ExpiresAt.After(now) || now.Sub(e.lastUsed) > idleLifetime) {
			delete(b.entries, key)
		}
	}
	for len(b.entries) >= maxEntries {
		var oldest string
		for key, e := range b.entries {
			if oldest == "" || e.lastUsed.Before(b.entries[oldest].lastUsed) {
				oldest = key
			}
		}
		// A refresh in progress still answers the callers waiting for it.
		delete(b.entries, oldest)
	}
}

// refreshMargin is how long before expiry credentials of the given lifetime are refreshed.
func refreshMargin(lifetime time.Duration) time.Duration {
	return min(maxRefreshMargin, lifetime/refreshMarginDivisor)
}
