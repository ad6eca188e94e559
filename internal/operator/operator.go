// Package operator assembles the manager: the main binary, the envtest suite, the demo and the
// bench all run the operator through New, so they run the same wiring.
package operator

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/controllers"
	"github.com/kms-key-sync/kms-key-sync/internal/identity"
	"github.com/kms-key-sync/kms-key-sync/internal/keysource"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/metrics"
)

// Scheme knows the Kubernetes built-in types and the operator's own.
var Scheme = runtime.NewScheme()

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(Scheme))
	utilruntime.Must(kmsv1alpha1.AddToScheme(Scheme))
}

// Options configure the operator; main.go binds them to flags.
type Options struct {
	MetricsAddr string
	// MetricsSecure serves metrics over HTTPS, to callers that authenticate and are authorized
	// to get /metrics (see config/rbac/metrics_reader_role.yaml).
	MetricsSecure bool
	ProbeAddr     string
	// PprofAddr serves net/http/pprof for profiling; "" or "0" disables it.
	PprofAddr               string
	LeaderElection          bool
	LeaderElectionNamespace string
	// LeaderElectionReleaseOnCancel gives the lease up when the manager stops, so a standby
	// takes over at once instead of after the lease expires. Only safe when the process exits
	// as soon as the manager has stopped, as main does.
	LeaderElectionReleaseOnCancel bool
	// LeaseDuration, RenewDeadline and RetryPeriod time the leader election; zero means
	// controller-runtime's defaults (15s, 10s and 2s).
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
	// AllowInsecureEndpoints, MaxConcurrentReconciles, SyncTimeout and Backoff are the
	// reconciler's; see controllers.Options. Zero means the default.
	AllowInsecureEndpoints  bool
	MaxConcurrentReconciles int
	// AllowedIAMHosts are the hosts a workload identity of a namespaced kind may send its
	// token to; see controllers.Options. nil means identity.DefaultIAMHosts.
	AllowedIAMHosts []string
	SyncTimeout     time.Duration
	Backoff         time.Duration
	// ClusterResourceNamespace holds the Secrets of ClusterKmsProviders that name no namespace,
	// and the refresh checkpoint; empty means no checkpoint.
	ClusterResourceNamespace string
	// CheckpointInterval is how often the leader writes the refresh checkpoint when it moved;
	// zero means controllers.DefaultCheckpointInterval.
	CheckpointInterval time.Duration
	// WatchNamespaces restricts the operator to these namespaces; empty means all.
	WatchNamespaces []string
	// CoalesceWindow is how long a successful listing answers identical requests of other
	// selectors; zero means keysource.DefaultCoalesceWindow. Keep it well under the smallest
	// refresh interval.
	CoalesceWindow time.Duration
	// KMSQPS and KMSBurst limit the KMS calls of the whole operator; zero QPS means no limit.
	KMSQPS   float64
	KMSBurst int
	// KMS is the base configuration of every KMS client: transport, timeouts, retries, observer.
	// IAM and the pod identity endpoint are called through the same transport.
	KMS kms.Config
	// MetadataEndpoint is the ECS metadata service that node agency credentials come from;
	// empty means identity.DefaultMetadataEndpoint.
	MetadataEndpoint string
	// PodIdentityURI and PodIdentityTokenFile are where CCE Pod Identity gives the operator its
	// credentials; main reads them from HC_CONTAINER_CREDENTIALS_FULL_URI and
	// HC_CONTAINER_AUTHORIZATION_TOKEN_FILE.
	PodIdentityURI       string
	PodIdentityTokenFile string
	// Now is the clock of the schedule, the listings and the credentials' expiry; nil means
	// time.Now. Tests set one to run hours of refreshes in seconds.
	Now func() time.Time
	// Logger is the manager's logger, which its controller, cache and event recorder log
	// through; the zero value means controller-runtime's global logger, as main uses.
	Logger logr.Logger
	// SkipNameValidation lets this manager's controller share its name with a controller of
	// another manager in the same process, as tests that run several operators in one process
	// need. main never sets it.
	SkipNameValidation bool
}

// New returns a manager running the KmsKeySelector and provider controllers.
func New(cfg *rest.Config, o Options) (ctrl.Manager, error) {
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        Scheme,
		Metrics:                       metricsOptions(o),
		HealthProbeBindAddress:        o.ProbeAddr,
		PprofBindAddress:              o.PprofAddr,
		LeaderElection:                o.LeaderElection,
		LeaderElectionID:              "kms-key-sync.keysync.dev",
		LeaderElectionNamespace:       o.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: o.LeaderElectionReleaseOnCancel,
		LeaseDuration:                 positive(o.LeaseDuration),
		RenewDeadline:                 positive(o.RenewDeadline),
		RetryPeriod:                   positive(o.RetryPeriod),
		Cache:                         cacheOptions(o.WatchNamespaces),
		Logger:                        o.Logger,
		Controller:                    config.Controller{SkipNameValidation: skipNameValidation(o)},
	})
	if err != nil {
		return nil, fmt.Errorf("creating manager: %w", err)
	}
	if err := controllers.SetupIndexes(context.Background(), mgr); err != nil {
		return nil, fmt.Errorf("setting up indexes: %w", err)
	}
	options := controllers.Options{
		AllowInsecureEndpoints:   o.AllowInsecureEndpoints,
		AllowedIAMHosts:          o.AllowedIAMHosts,
		SyncTimeout:              o.SyncTimeout,
		Backoff:                  o.Backoff,
		MaxConcurrentReconciles:  o.MaxConcurrentReconciles,
		ClusterResourceNamespace: o.ClusterResourceNamespace,
		Now:                      o.Now,
	}
	direct := newDirect(o)
	identities := newBroker(o, mgr, mgr.GetLogger().WithName("identity"))
	refreshes := &controllers.Refreshes{
		Client:    mgr.GetClient(),
		Reader:    mgr.GetAPIReader(),
		Cache:     mgr.GetClient(),
		Namespace: o.ClusterResourceNamespace,
		Interval:  o.CheckpointInterval,
		Now:       o.Now,
	}
	if err := mgr.Add(refreshes); err != nil {
		return nil, fmt.Errorf("adding the refresh checkpoint: %w", err)
	}
	selectors := &controllers.KmsKeySelectorReconciler{
		Client:     mgr.GetClient(),
		APIReader:  mgr.GetAPIReader(),
		Recorder:   mgr.GetEventRecorder("kms-key-sync"),
		Keys:       coalesced(o, direct),
		Identities: identities,
		Refreshes:  refreshes,
		Options:    options,
	}
	if err := selectors.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("setting up the selector controller: %w", err)
	}
	providers := &controllers.ProviderReconciler{
		Client:     mgr.GetClient(),
		APIReader:  mgr.GetAPIReader(),
		Recorder:   mgr.GetEventRecorder("kms-key-sync"),
		Keys:       direct,
		Identities: identities,
		Refreshes:  refreshes,
		Options:    options,
	}
	if err := providers.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("setting up the provider controllers: %w", err)
	}
	if o.ProbeAddr != "" && o.ProbeAddr != "0" {
		if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
			return nil, fmt.Errorf("adding health check: %w", err)
		}
		if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
			return nil, fmt.Errorf("adding ready check: %w", err)
		}
	}
	return mgr, nil
}

// newDirect returns the KMS client behind the rate limit, recording every KMS request in the
// Prometheus metrics; selectors and providers share it, and so the limit.
func newDirect(o Options) *keysource.Direct {
	base := o.KMS
	base.Observer = metrics.KMSObserver{Next: o.KMS.Observer}
	return keysource.NewDirect(base, o.KMSQPS, o.KMSBurst)
}

// newBroker returns the cache of keyless credentials that selectors and providers share, so an
// identity costs one exchange per credential lifetime however many use it.
func newBroker(o Options, mgr ctrl.Manager, log logr.Logger) *identity.Broker {
	metadata := o.MetadataEndpoint
	if metadata == "" {
		metadata = identity.DefaultMetadataEndpoint
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	return &identity.Broker{
		HTTP: &http.Client{
			Transport: keysource.TransportOf(o.KMS),
			Timeout:   o.KMS.RequestTimeout,
			// A redirect would resend a token elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		// The metadata service answers on a link-local address, without a proxy, or not at all.
		Metadata: &http.Client{
			Transport:     &http.Transport{Proxy: nil},
			Timeout:       metadataTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		MetadataEndpoint:     metadata,
		PodIdentityURI:       o.PodIdentityURI,
		PodIdentityTokenFile: o.PodIdentityTokenFile,
		// Service accounts are read uncached: the operator may only get them, not list them.
		Tokens:                 identity.ServiceAccountTokens{Client: mgr.GetClient(), Reader: mgr.GetAPIReader()},
		Now:                    now,
		AllowInsecureEndpoints: o.AllowInsecureEndpoints,
		OnRefresh: func(method string, err error) {
			metrics.ObserveCredentialRefresh(method, err)
			if err != nil {
				// A failure the selectors do not see, while the credentials in hand still work,
				// shows here and in the metric.
				log.Info("Refreshing keyless credentials failed", "method", method, "error", err.Error())
			}
		},
	}
}

// metadataTimeout bounds each call to the metadata service, as the official SDK does.
const metadataTimeout = 3 * time.Second

// coalesced stands coalescing in front of direct, for the selectors' listings.
func coalesced(o Options, direct *keysource.Direct) *keysource.Coalescing {
	return &keysource.Coalescing{Next: direct, TTL: o.CoalesceWindow, OnCoalesced: metrics.CoalescedRequests.Inc, OnListed: metrics.ObserveListing, Now: o.Now}
}

// cacheOptions limits the ConfigMap informer to the operator's own ConfigMaps, so memory does not
// grow with the cluster's other ConfigMaps. Secrets are never cached: they are read uncached.
func cacheOptions(namespaces []string) cache.Options {
	managed := labels.SelectorFromSet(labels.Set{kmsv1alpha1.ManagedByLabel: kmsv1alpha1.ManagedByValue})
	opts := cache.Options{
		// Managed fields list every data key of a server-side-applied ConfigMap; nothing here
		// reads them, and they would double the cache.
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			// The controller caches only the metadata of its own ConfigMaps; a typed ConfigMap
			// read through the cache would be limited to them too.
			controllers.ConfigMapMetadata(): {Label: managed},
			&corev1.ConfigMap{}:             {Label: managed},
		},
	}
	if len(namespaces) > 0 {
		opts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range namespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	return opts
}

// positive is d, or nil for the manager's default when d is not positive.
func positive(d time.Duration) *time.Duration {
	if d <= 0 {
		return nil
	}
	return &d
}

func skipNameValidation(o Options) *bool {
	if !o.SkipNameValidation {
		return nil
	}
	return ptr.To(true)
}

func metricsOptions(o Options) metricsserver.Options {
	m := metricsserver.Options{BindAddress: o.MetricsAddr, SecureServing: o.MetricsSecure}
	if o.MetricsSecure {
		m.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	return m
}
