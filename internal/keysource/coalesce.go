package keysource

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sync"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// DefaultCoalesceWindow is the default TTL of Coalescing: long enough for the selectors of one
// question reconciled one after another, short enough that a thousand questions asked by one
// selector each do not hold their listings long.
const DefaultCoalesceWindow = 2 * time.Second

// Lister is what Coalescing stands in front of.
type Lister interface {
	ListKeys(ctx context.Context, req Request) ([]kms.Key, error)
}

// Coalescing answers identical requests with one listing: requests in flight share it, and a
// successful listing is reused for TTL, which must be well under the smallest refresh interval,
// or by any request for the slot it was made for (NotBefore). Two requests are identical when
// their endpoint, project, credentials, page size and filter are; the credentials are part of
// the key, so no request is ever answered with data listed under other credentials. Failures are
// never cached.
//
// A listing is kept only while something may ask for it, since a thousand questions asked by one
// selector each would otherwise hold every listing of the last TTL. When a question's last kept
// listing expired without answering another request, the question is taken to be asked alone
// and its next listings are handed to their callers and dropped, until one answers more than
// one request: another request joins it in flight, or misses a dropped listing that would have
// answered it. Listings begun for a Fresh request are always kept, for its retries.
//
// A shared listing belongs to no single caller: it runs until it ends or every caller waiting
// for it has given up, each caller waits only as long as its own context allows, and it retries
// as often as the most patient of its callers asks.
//
// The returned slices are shared between callers and must not be modified.
type Coalescing struct {
	Next Lister
	// TTL is how long a listing answers identical requests; zero means DefaultCoalesceWindow.
	TTL time.Duration
	// OnCoalesced is called for every request answered without a listing of its own.
	OnCoalesced func()
	// OnListed is called after every listing that called the next source, with the trigger of
	// the request that began it, its wall-clock duration and its error.
	OnListed func(Trigger, time.Duration, error)
	// Now is the clock listings are stamped with; nil means time.Now.
	Now func() time.Time

	mu      sync.Mutex
	flights map[string]*flight
	cache   map[string]cached
	// alone holds, for each question asked alone, when its last listing began: kept until it
	// expired unshared, or dropped when done.
	alone map[string]time.Time
}

// flight is one listing in progress and the callers waiting for it.
type flight struct {
	// started is when the listing began: what KMS said before then is all it can answer.
	started time.Time
	done    chan struct{}
	keys    []kms.Key
	err     error
	cancel  context.CancelFunc
	// waiters, attempts and shared are guarded by Coalescing.mu. attempts is the most any waiter
	// allows, 0 standing for the client's default, which no explicit override exceeds.
	waiters  int
	attempts int
	// shared is set when the listing answers more than one request of its slot: another request
	// joined it, or its own request would have been answered by the question's dropped listing.
	shared bool
	// fresh is set when a Fresh request began the listing: its retry may come back for it.
	fresh bool
}

type cached struct {
	keys []kms.Key
	// at is when the listing began, not when it ended: a key that changed while the listing ran
	// may or may not be in it, so it answers only requests made before it began.
	at time.Time
	// shared is set once the listing answered another request, in flight or from here, or when
	// it was begun for a request that the question's dropped listing would have answered: it
	// serves a group of selectors on one slot, and is kept for the group's stragglers.
	shared bool
}

// groupWindow is how long a shared listing is kept for refreshes of its slot that are served
// late, when the API server or the workers fall behind.
const groupWindow = time.Minute

var _ Lister = (*Coalescing)(nil)

// ListKeys returns a listing fresher than TTL for req, or one begun since req.NotBefore, or lists.
// A Fresh request takes only a listing begun since req.NotBefore (since the request, when that is
// zero), whether it is done or in flight: one begun earlier may miss the change the request is
// about.
func (c *Coalescing) ListKeys(ctx context.Context, req Request) ([]kms.Key, error) {
	id := identity(req)
	c.mu.Lock()
	regrouped := false
	if req.Fresh && req.NotBefore.IsZero() {
		// Nothing listed so far answers it; only a listing that begins now may.
		req.NotBefore = c.clock()
	} else if keys, ok := c.lookup(id, req.NotBefore, req.Fresh); ok {
		c.mu.Unlock()
		c.coalesced()
		return keys, nil
	} else if at, ok := c.alone[id]; ok && c.answers(at, req.NotBefore, req.Fresh) {
		// The question's dropped listing would have answered this request: it is no longer
		// asked alone.
		regrouped = true
		delete(c.alone, id)
	}
	f, joined := c.flights[id]
	if joined && req.Fresh && f.started.Before(req.NotBefore) {
		// Too old for this request. It runs on for its own callers; later ones join the new one.
		joined = false
	}
	if joined {
		f.waiters++
		f.attempts = morePatient(f.attempts, req.MaxAttempts)
		f.shared = true
	} else {
		f = c.start(ctx, id, req)
		f.shared = regrouped
	}
	c.mu.Unlock()
	if joined {
		c.coalesced()
	}

	select {
	case <-f.done:
		return f.keys, f.err
	case <-ctx.Done():
		c.mu.Lock()
		if f.waiters--; f.waiters == 0 {
			// Nobody wants it any more; a later caller starts afresh rather than join a
			// cancelled listing.
			f.cancel()
			c.forgetFlight(id, f)
		}
		c.mu.Unlock()
		return nil, ctx.Err()
	}
}

// start begins a listing for req that outlives the caller's context; c.mu is held.
func (c *Coalescing) start(ctx context.Context, id string, req Request) *flight {
	listCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &flight{started: c.clock(), done: make(chan struct{}), cancel: cancel, waiters: 1, attempts: req.MaxAttempts,
		fresh: req.Fresh}
	if c.flights == nil {
		c.flights = map[string]*flight{}
	}
	c.flights[id] = f
	req.attemptLimit = func() int {
		c.mu.Lock()
		defer c.mu.Unlock()
		return f.attempts
	}
	go func() {
		defer cancel()
		began := time.Now()
		keys, err := c.Next.ListKeys(listCtx, req)
		if c.OnListed != nil {
			c.OnListed(req.Trigger, time.Since(began), err)
		}
		c.mu.Lock()
		c.forgetFlight(id, f)
		c.prune()
		if err == nil {
			c.keep(id, keys, f)
		}
		f.keys, f.err = keys, err
		c.mu.Unlock()
		close(f.done)
	}()
	return f
}

// forgetFlight removes f unless another flight has taken its place; c.mu is held.
func (c *Coalescing) forgetFlight(id string, f *flight) {
	if c.flights[id] == f {
		delete(c.flights, id)
	}
}

// morePatient returns the larger attempt limit, 0 (the client's default) being the largest.
func morePatient(a, b int) int {
	if a == 0 || b == 0 {
		return 0
	}
	return max(a, b)
}

// lookup returns a listing begun since notBefore within groupWindow or, unless fresh, one younger
// than TTL; c.mu is held.
func (c *Coalescing) lookup(id string, notBefore time.Time, fresh bool) ([]kms.Key, bool) {
	e, ok := c.cache[id]
	if !ok || !c.answers(e.at, notBefore, fresh) {
		return nil, false
	}
	e.shared = true
	c.cache[id] = e
	delete(c.alone, id)
	return e.keys, true
}

// answers reports whether a listing begun at at answers a request for a listing begun since
// notBefore, or fresher than TTL unless fresh.
func (c *Coalescing) answers(at, notBefore time.Time, fresh bool) bool {
	age := c.clock().Sub(at)
	since := !notBefore.IsZero() && !at.Before(notBefore) && age < groupWindow
	return since || (!fresh && age < c.ttl())
}

// keep caches the successful listing of f unless a later one is kept, or its question is asked
// alone and nothing but its own request asked for it; c.mu is held.
func (c *Coalescing) keep(id string, keys []kms.Key, f *flight) {
	if _, alone := c.alone[id]; alone && !f.shared && !f.fresh {
		c.markAlone(id, f.started)
		return
	}
	if f.shared {
		delete(c.alone, id)
	}
	if e, ok := c.cache[id]; ok && e.at.After(f.started) {
		return
	}
	if c.cache == nil {
		c.cache = map[string]cached{}
	}
	c.cache[id] = cached{keys: keys, at: f.started, shared: f.shared}
}

// prune drops expired listings, marking those that answered no other request as asked alone,
// and forgets marks too old to answer any request; c.mu is held. A listing nobody shared lives
// for TTL, so the cache holds the unshared questions of one TTL at most.
func (c *Coalescing) prune() {
	now := c.clock()
	for id, e := range c.cache {
		if age := now.Sub(e.at); age < groupWindow && (age < c.ttl() || e.shared) {
			continue
		}
		delete(c.cache, id)
		if !e.shared {
			c.markAlone(id, e.at)
		}
	}
	for id, at := range c.alone {
		if now.Sub(at) >= groupWindow {
			delete(c.alone, id)
		}
	}
}

// markAlone records that the question's listing begun at at answered no other request; c.mu is
// held.
func (c *Coalescing) markAlone(id string, at time.Time) {
	if c.alone == nil {
		c.alone = map[string]time.Time{}
	}
	if last, ok := c.alone[id]; !ok || at.After(last) {
		c.alone[id] = at
	}
}

func (c *Coalescing) ttl() time.Duration {
	if c.TTL > 0 {
		return c.TTL
	}
	return DefaultCoalesceWindow
}

func (c *Coalescing) coalesced() {
	if c.OnCoalesced != nil {
		c.OnCoalesced()
	}
}

func (c *Coalescing) clock() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// identity is a digest of everything that determines a listing's answer. The credentials are
// hashed into it, never kept in clear.
func identity(req Request) string {
	cr := req.Credentials
	canonical, _ := json.Marshal([]any{req.query(), cr.AccessKey, cr.SecretKey, cr.SecurityToken, cr.Token})
	sum := sha256.Sum256(canonical)
	return hex.EncodeToString(sum[:])
}
