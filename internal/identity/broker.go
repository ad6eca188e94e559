package identity

import (
	"context"
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

// TokenMinter mints short-lived service account tokens (the TokenRequest API).
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
	flight      *flight
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
	e := b.entries[key]
	if e == nil {
		b.forgetExpired()
		e = &entry{}
		b.entries[key] = e
	}
	if creds, ok := e.cached(b.Now()); ok {
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
	if err == nil && !creds.ExpiresAt.After(start) {
		err = &Error{Method: methodOf(src), Step: "credentials", Message: "the credentials received have already expired; check the clocks of the node and of the cloud"}
	}
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

// forgetExpired drops the entries of identities whose credentials have expired and that nobody
// is refreshing, such as those of deleted providers. The caller holds b.mu.
func (b *Broker) forgetExpired() {
	now := b.Now()
	for key, e := range b.entries {
		if e.flight == nil && !e.creds.ExpiresAt.After(now) {
			delete(b.entries, key)
		}
	}
}

// refreshMargin is how long before expiry credentials of the given lifetime are refreshed.
func refreshMargin(lifetime time.Duration) time.Duration {
	return min(maxRefreshMargin, lifetime/refreshMarginDivisor)
}
