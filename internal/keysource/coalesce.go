package keysource

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// Lister is what Coalescing stands in front of.
type Lister interface {
	ListKeys(ctx context.Context, req Request) ([]kms.Key, error)
}

// Coalescing answers identical requests with one listing: requests in flight share it
// (singleflight), and a successful listing is reused for TTL, which must be well under the
// smallest refresh interval, or by any request for the slot it was made for (NotBefore). Two requests are identical when their endpoint, project,
// credentials, page size and filter are; the credentials are part of the key, so no request is
// ever answered with data listed under other credentials. Failures are never cached.
//
// The returned slices are shared between callers and must not be modified.
type Coalescing struct {
	Next Lister
	TTL  time.Duration
	// OnCoalesced is called for every request answered without a listing of its own.
	OnCoalesced func()

	group singleflight.Group
	mu    sync.Mutex
	cache map[string]cached
	now   func() time.Time
}

type cached struct {
	keys []kms.Key
	at   time.Time
	// shared is set once the listing answered another request: it serves a group of selectors
	// on one slot, and is kept for the group's stragglers.
	shared bool
}

// groupWindow is how long a shared listing is kept for refreshes of its slot that are served
// late, when the API server or the workers fall behind.
const groupWindow = time.Minute

var _ Lister = (*Coalescing)(nil)

// ListKeys returns a listing fresher than TTL for req, or lists. A Fresh request never takes a
// cached listing, but may share one in flight.
func (c *Coalescing) ListKeys(ctx context.Context, req Request) ([]kms.Key, error) {
	id := identity(req)
	if keys, ok := c.lookup(id, req.NotBefore); ok && !req.Fresh {
		c.coalesced()
		return keys, nil
	}
	led := false
	ch := c.group.DoChan(id, func() (any, error) {
		led = true
		keys, err := c.Next.ListKeys(ctx, req)
		if err == nil {
			c.store(id, keys)
		}
		return keys, err
	})
	select {
	case res := <-ch:
		if !led {
			c.coalesced()
		}
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.([]kms.Key), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// lookup returns a listing younger than TTL, or one made since notBefore within groupWindow.
func (c *Coalescing) lookup(id string, notBefore time.Time) ([]kms.Key, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cache[id]
	if !ok {
		return nil, false
	}
	age := c.clock().Sub(e.at)
	sameSlot := !notBefore.IsZero() && !e.at.Before(notBefore) && age < groupWindow
	if age >= c.TTL && !sameSlot {
		return nil, false
	}
	e.shared = true
	c.cache[id] = e
	return e.keys, true
}

func (c *Coalescing) store(id string, keys []kms.Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock()
	if c.cache == nil {
		c.cache = map[string]cached{}
	}
	// Expired entries are dropped here: a listing nobody shared lives for TTL, so the cache
	// holds the unshared queries of one TTL at most.
	for k, e := range c.cache {
		if age := now.Sub(e.at); age >= groupWindow || (age >= c.TTL && !e.shared) {
			delete(c.cache, k)
		}
	}
	c.cache[id] = cached{keys: keys, at: now}
}

func (c *Coalescing) coalesced() {
	if c.OnCoalesced != nil {
		c.OnCoalesced()
	}
}

func (c *Coalescing) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// identity is a digest of everything that determines a listing's answer. The credentials are
// hashed into it, never kept in clear.
func identity(req Request) string {
	c := req.Credentials
	canonical, _ := json.Marshal([]any{req.query(), c.AccessKey, c.SecretKey, c.SecurityToken, c.Token})
	sum := sha256.Sum256(canonical)
	return hex.EncodeToString(sum[:])
}
