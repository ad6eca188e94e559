// Package keysource turns a selector's question into KMS listings. The reconciler sees only the
// narrow ListKeys method; what stands behind it (a client per question, coalescing, rate limits)
// lives here.
package keysource

import (
	"context"

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
