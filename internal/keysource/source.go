// Package keysource turns a selector's question into KMS listings. The reconciler sees only the
// narrow ListKeys method; what stands behind it (a client per question, coalescing, rate limits)
// lives here.
package keysource

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/http"
	"slices"
	"time"

	"golang.org/x/time/rate"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// Request is one listing: where, as whom, and what.
type Request struct {
	// Endpoint is the base URL of the KMS API, such as https://kms.cn-north-4.myhuaweicloud.com.
	Endpoint    string
	ProjectID   string
	Credentials kms.Credentials
	// PageSize is the limit of each ListKmsByTags call, 1 to kms.MaxPageSize.
	PageSize int
	Filter   kms.Filter
	// NotBefore lets a request take a listing made at or after that time, even past the
	// coalescing TTL: the selectors of one slot then share one listing however late the last of
	// them is served, and a retry of a spec change reuses the listing made for it.
	NotBefore time.Time
	// MaxAttempts overrides the client's retry policy for each request when positive.
	MaxAttempts int
	// attemptLimit, set by Coalescing, gives the MaxAttempts of a shared listing as it stands
	// now, since a more patient caller may join it while it runs.
	attemptLimit func() int
	// Trigger is what asked for the listing. It is not part of the question: requests of any
	// trigger share listings.
	Trigger Trigger
	// Fresh refuses a listing that is merely recent: only one begun since NotBefore answers it, or
	// with NotBefore zero one begun since the request, done or still in flight. For spec changes and force-syncs, where the user expects what
	// KMS says after the change, and for retries, which a listing older than the failure must not
	// answer.
	Fresh bool
}

// Trigger is what asks for a listing, as the metrics name it.
type Trigger string

// The triggers of a listing.
const (
	TriggerFirstSync      Trigger = "first_sync"
	TriggerSpecChange     Trigger = "spec_change"
	TriggerForceSync      Trigger = "force_sync"
	TriggerProviderChange Trigger = "provider_change"
	TriggerRefresh        Trigger = "refresh"
	TriggerRetry          Trigger = "retry"
	// TriggerRepair lists for a ConfigMap that was edited or deleted when nothing else can
	// restore its content.
	TriggerRepair Trigger = "repair"
	// TriggerUnscheduled lists for a selector whose status schedules nothing, such as one whose
	// status was cleared.
	TriggerUnscheduled Trigger = "unscheduled"
)

// Phase is a stable number derived from the question alone, not the credentials: selectors
// asking the same question get the same phase, so their refreshes can be scheduled together.
func (r Request) Phase() uint64 {
	h := fnv.New64a()
	_, _ = h.Write(r.query())
	return h.Sum64()
}

// query is a canonical encoding of the question: where, page size and filter, with tags, values
// and matches sorted, since their order does not change the answer.
func (r Request) query() []byte {
	tags := slices.Clone(r.Filter.Tags)
	for i := range tags {
		tags[i].Values = slices.Sorted(slices.Values(tags[i].Values))
	}
	slices.SortFunc(tags, func(a, b kms.TagFilter) int { return cmp.Compare(a.Key, b.Key) })
	matches := slices.Clone(r.Filter.Matches)
	slices.SortFunc(matches, func(a, b kms.Match) int {
		return cmp.Or(cmp.Compare(a.Key, b.Key), cmp.Compare(a.Value, b.Value))
	})
	out, _ := json.Marshal([]any{r.Endpoint, r.ProjectID, r.PageSize, tags, matches})
	return out
}

// Direct lists with a new kms.Client per request. Base carries what every client shares: the
// HTTP transport, timeouts, retries, observer and logger.
type Direct struct {
	Base kms.Config
}

// NewDirect returns a Direct whose clients together make at most qps calls a second (with
// bursts of burst); qps 0 means no limit.
func NewDirect(base kms.Config, qps float64, burst int) *Direct {
	if qps > 0 {
		base.Transport = &limitedTransport{next: TransportOf(base), limiter: rate.NewLimiter(rate.Limit(qps), max(burst, 1))}
	}
	return &Direct{Base: base}
}

// ListKeys lists every key that matches req.Filter, or fails without a partial result.
func (d *Direct) ListKeys(ctx context.Context, req Request) ([]kms.Key, error) {
	cfg := d.Base
	cfg.Endpoint = req.Endpoint
	cfg.ProjectID = req.ProjectID
	cfg.Credentials = req.Credentials
	cfg.PageSize = req.PageSize
	limit := req.attemptLimit
	if limit == nil {
		limit = func() int { return req.MaxAttempts }
	}
	cfg.Retry.Limit = limit
	c, err := kms.New(cfg)
	if err != nil {
		return nil, err
	}
	return c.ListKeys(ctx, req.Filter)
}

// TransportOf is the transport a client of cfg uses: cfg.Transport, or the default one.
func TransportOf(cfg kms.Config) http.RoundTripper {
	if cfg.Transport != nil {
		return cfg.Transport
	}
	t, err := kms.NewTransport(nil)
	if err != nil {
		return http.DefaultTransport
	}
	return t
}

// limitedTransport waits for the shared limiter before every request, retries included, so the
// operator as a whole never exceeds its share of the account's API quota.
type limitedTransport struct {
	next    http.RoundTripper
	limiter *rate.Limiter
}

func (t *limitedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := t.limiter.Wait(req.Context()); err != nil {
		return nil, fmt.Errorf("waiting for the KMS rate limit: %w", err)
	}
	return t.next.RoundTrip(req)
}

// CountKeys counts the keys that match req.Filter with one call (action=count), through the
// same transport and rate limit as the listings.
func (d *Direct) CountKeys(ctx context.Context, req Request) (int, error) {
	cfg := d.Base
	cfg.Endpoint = req.Endpoint
	cfg.ProjectID = req.ProjectID
	cfg.Credentials = req.Credentials
	if req.MaxAttempts > 0 {
		cfg.Retry.MaxAttempts = req.MaxAttempts
	}
	c, err := kms.New(cfg)
	if err != nil {
		return 0, err
	}
	return c.CountKeys(ctx, req.Filter)
}
