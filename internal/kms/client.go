package kms

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// maxListPasses bounds ListKeys: the first pass plus three restarts after an inconsistent listing.
const maxListPasses = 4

// Client lists KMS keys with ListKmsByTags. It is safe for concurrent use.
type Client struct {
	s settings
	// now, sleep and jitter are replaced by tests.
	now    func() time.Time
	sleep  func(ctx context.Context, d time.Duration) error
	jitter func(ceiling time.Duration) time.Duration
}

// New validates cfg, applies defaults and returns a Client. A configuration error names every
// offending field.
func New(cfg Config) (*Client, error) {
	s, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	return &Client{s: s, now: time.Now, sleep: sleepContext, jitter: fullJitter}, nil
}

// ListKeys returns every key that matches f, sorted by ID, without duplicates. The filter is
// validated first (a *ValidationError sends nothing). Pages of Config.PageSize keys are requested
// until total_count is reached or a page comes back empty, so N keys cost ceil(N/PageSize)
// requests (one for none). A listing that changes underneath it — total_count moving between
// pages, an empty page before total_count, distinct keys not adding up to total_count — is started
// again a bounded number of times before failing with ErrInconsistentListing. A partial listing
// is never returned.
func (c *Client) ListKeys(ctx context.Context, f Filter) ([]Key, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	var last error
	for pass := 1; pass <= maxListPasses; pass++ {
		if pass > 1 {
			if err := c.sleep(ctx, c.backoff(pass-1)); err != nil {
				return nil, fmt.Errorf("%s: %w while restarting an inconsistent listing: %w", operationName(ActionFilter), err, last)
			}
		}
		keys, err := c.listPass(ctx, f)
		var inc *inconsistency
		if !errors.As(err, &inc) {
			return keys, err
		}
		last = err
		c.s.logger.V(1).Info("kms listing inconsistent", "pass", pass, "maxPasses", maxListPasses, "reason", err.Error())
	}
	return nil, fmt.Errorf("%s: %w after %d passes: %w", operationName(ActionFilter), ErrInconsistentListing, maxListPasses, last)
}

// CountKeys returns the number of keys that match f (action=count).
func (c *Client) CountKeys(ctx context.Context, f Filter) (int, error) {
	body, err := buildRequestBody(f, ActionCount, 0, 0)
	if err != nil {
		return 0, err
	}
	var total int
	err = c.withRetry(ctx, ActionCount, func() error {
		return c.attempt(ctx, ActionCount, body, func(data []byte) error {
			var err error
			total, err = decodeCountResponse(data)
			return err
		})
	})
	if err != nil {
		return 0, err
	}
	return total, nil
}

// String describes the client without its credentials.
func (c *Client) String() string {
	if c == nil {
		return "kms.Client(nil)"
	}
	return fmt.Sprintf("kms.Client{endpoint: %s, project: %s, credentials: %s}", c.s.baseURL, c.s.projectID, c.s.creds)
}

// GoString keeps %#v from printing credentials.
func (c *Client) GoString() string { return c.String() }

// Format keeps every verb, %+v and %#v included, from printing credentials.
func (c *Client) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, c.String()) }

// inconsistency says why one listing pass cannot be trusted.
type inconsistency struct{ reason string }

func (e *inconsistency) Error() string { return e.reason }

func inconsistent(format string, args ...any) error {
	return &inconsistency{reason: fmt.Sprintf(format, args...)}
}

// listPass lists every page once and checks that the pages agree with each other.
func (c *Client) listPass(ctx context.Context, f Filter) ([]Key, error) {
	byID := map[string]Key{}
	total, offset := -1, 0
	for {
		page, pageTotal, err := c.fetchPage(ctx, f, offset)
		if err != nil {
			return nil, err
		}
		if total >= 0 && pageTotal != total {
			return nil, inconsistent("total_count changed from %d to %d at offset %d", total, pageTotal, offset)
		}
		total = pageTotal
		for _, k := range page {
			byID[k.ID] = k
		}
		if len(page) == 0 {
			if offset < total {
				return nil, inconsistent("empty page at offset %d of total_count %d", offset, total)
			}
			break
		}
		offset += len(page)
		if offset >= total {
			break
		}
	}
	if len(byID) != total {
		return nil, inconsistent("%d distinct keys listed for total_count %d", len(byID), total)
	}
	return sortedKeys(byID), nil
}

func (c *Client) fetchPage(ctx context.Context, f Filter, offset int) ([]Key, int, error) {
	body, err := buildRequestBody(f, ActionFilter, c.s.pageSize, offset)
	if err != nil {
		return nil, 0, err
	}
	var (
		keys  []Key
		total int
	)
	err = c.withRetry(ctx, ActionFilter, func() error {
		return c.attempt(ctx, ActionFilter, body, func(data []byte) error {
			var err error
			keys, total, err = DecodeListResponse(data)
			return err
		})
	})
	return keys, total, err
}

func sortedKeys(byID map[string]Key) []Key {
	keys := make([]Key, 0, len(byID))
	for _, k := range byID {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b Key) int { return strings.Compare(a.ID, b.ID) })
	return keys
}

// withRetry calls try until it succeeds, fails for good, the attempts run out or ctx ends.
func (c *Client) withRetry(ctx context.Context, op string, try func() error) error {
	p := c.s.retry
	for attempt := 1; ; attempt++ {
		err := try()
		if err == nil || ctx.Err() != nil || !IsRetryable(err) {
			return err
		}
		if attempt >= p.maxAttempts() {
			return fmt.Errorf("%s: giving up after %s: %w", operationName(op), plural(attempt, "attempt"), err)
		}
		d := c.retryDelay(attempt, err)
		c.s.logger.V(1).Info("kms request failed, retrying", "operation", op, "attempt", attempt,
			"delay", d, "error", err.Error())
		if serr := c.sleep(ctx, d); serr != nil {
			return fmt.Errorf("%s: %w while waiting to retry after %s: %w", operationName(op), serr, plural(attempt, "attempt"), err)
		}
	}
}

// retryDelay is the wait before retry number n (n >= 1): full jitter over an exponentially
// growing ceiling, but at least the server's Retry-After, capped.
func (c *Client) retryDelay(n int, err error) time.Duration {
	d := c.backoff(n)
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.RetryAfter > 0 {
		d = max(d, min(apiErr.RetryAfter, c.s.retry.MaxRetryAfter))
	}
	return d
}

// backoff draws the jittered delay before retry n from [0, min(MaxDelay, BaseDelay*2^(n-1))].
func (c *Client) backoff(n int) time.Duration {
	p := c.s.retry
	ceiling := p.MaxDelay
	if n-1 < 32 {
		if d := p.BaseDelay << (n - 1); d > 0 && d < ceiling {
			ceiling = d
		}
	}
	return c.jitter(ceiling)
}

func fullJitter(ceiling time.Duration) time.Duration {
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling + 1)
}

func sleepContext(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return context.Cause(ctx)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
