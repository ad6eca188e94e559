// Package keysource turns a selector's question into KMS listings. The reconciler sees only the
// narrow ListKeys method; what stands behind it (a client per question, coalescing, rate limits)
// lives here.
package keysource

import (
	"context"
	"fmt"
	"net/http"

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
		base.Transport = &limitedTransport{next: transportOf(base), limiter: rate.NewLimiter(rate.Limit(qps), max(burst, 1))}
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
	c, err := kms.New(cfg)
	if err != nil {
		return nil, err
	}
	return c.ListKeys(ctx, req.Filter)
}

func transportOf(cfg kms.Config) http.RoundTripper {
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
