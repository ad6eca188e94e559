package controllers

import (
	"math/rand/v2"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/identity"
)

// Defaults of Options.
const (
	DefaultSyncTimeout = 2 * time.Minute
	DefaultBackoff     = 5 * time.Second
	// DefaultMaxConcurrentReconciles is also the default of --max-concurrent-reconciles.
	DefaultMaxConcurrentReconciles = 4
	// DefaultRefreshInterval is the CRD's default of spec.refreshInterval, for objects that
	// bypassed defaulting.
	DefaultRefreshInterval = 5 * time.Minute
)

// Options configure the reconciler. The zero value of each field means its default.
type Options struct {
	// AllowInsecureEndpoints permits plain http:// endpoints, which carry credentials in clear text.
	AllowInsecureEndpoints bool
	// AllowedIAMHosts are the host patterns (see identity.HostAllowed) that a workload identity
	// of a namespaced kind, an inline provider or a KmsProvider, may send its token to; nil
	// means identity.DefaultIAMHosts. A ClusterKmsProvider, written by the admin, may name any.
	AllowedIAMHosts []string
	// SyncTimeout bounds one complete listing, so a hung KMS never pins a worker.
	SyncTimeout time.Duration
	// Backoff is the first retry delay after a failure; it doubles up to the refresh interval.
	Backoff time.Duration
	// ClusterResourceNamespace holds the Secrets of ClusterKmsProviders that name none.
	ClusterResourceNamespace string
	// MaxConcurrentReconciles is how many selectors are synced at the same time.
	MaxConcurrentReconciles int
	// Now and Jitter stand in for the clock and for the random part of the backoff in tests.
	// Jitter(d) returns a duration in [0, d].
	Now    func() time.Time
	Jitter func(d time.Duration) time.Duration
}

func (o Options) withDefaults() Options {
	if o.SyncTimeout <= 0 {
		o.SyncTimeout = DefaultSyncTimeout
	}
	if o.Backoff <= 0 {
		o.Backoff = DefaultBackoff
	}
	if o.MaxConcurrentReconciles <= 0 {
		o.MaxConcurrentReconciles = DefaultMaxConcurrentReconciles
	}
	if o.AllowedIAMHosts == nil {
		o.AllowedIAMHosts = identity.DefaultIAMHosts
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Jitter == nil {
		o.Jitter = func(d time.Duration) time.Duration { return rand.N(d + 1) }
	}
	return o
}
