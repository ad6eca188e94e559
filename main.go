package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/controllers"
	"github.com/kms-key-sync/kms-key-sync/internal/identity"
	"github.com/kms-key-sync/kms-key-sync/internal/keysource"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/operator"
)

// Set through -ldflags at build time.
var (
	version = "dev"
	commit  = "unknown"
)

// flags are the command line: operator options plus what main resolves before building them.
type flags struct {
	operator.Options
	kmsCAFile string
	zap       zap.Options
}

func parseFlags(args []string, output io.Writer) (flags, error) {
	var f flags
	fs := newFlagSet(&f)
	fs.SetOutput(output)
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return f, f.validate()
}

// newFlagSet binds the command line to f. The README's flag table lists the same flags.
func newFlagSet(f *flags) *flag.FlagSet {
	fs := flag.NewFlagSet("kms-key-sync", flag.ContinueOnError)
	fs.StringVar(&f.MetricsAddr, "metrics-bind-address", ":8443", "The address the metrics endpoint binds to; \"0\" disables it.")
	fs.BoolVar(&f.MetricsSecure, "metrics-secure", true, "Serve metrics over HTTPS to authenticated, authorized callers only; false serves plain HTTP.")
	fs.StringVar(&f.ProbeAddr, "health-probe-bind-address", ":8081", "The address the health and readiness probes bind to.")
	fs.StringVar(&f.PprofAddr, "pprof-bind-address", "0", "The address net/http/pprof binds to, for profiling; \"0\" disables it.")
	fs.BoolVar(&f.LeaderElection, "leader-elect", false, "Enable leader election, so that only one replica syncs at a time.")
	fs.BoolVar(&f.AllowInsecureEndpoints, "allow-insecure-endpoints", false, "Allow plain http:// KMS and IAM endpoints, which send credentials in clear text. For emulators and tests only.")
	f.AllowedIAMHosts = identity.DefaultIAMHosts
	fs.Var(hostList{&f.AllowedIAMHosts}, "allowed-iam-hosts", "Comma-separated hosts that the workload identity of a KmsProvider or an inline provider may send service account tokens to: a * stands for one DNS label or any port, and a host without a port means port 443. A ClusterKmsProvider may name any IAM endpoint.")
	fs.IntVar(&f.MaxConcurrentReconciles, "max-concurrent-reconciles", controllers.DefaultMaxConcurrentReconciles, "How many selectors are synced at the same time.")
	fs.DurationVar(&f.SyncTimeout, "sync-timeout", controllers.DefaultSyncTimeout, "The longest a selector waits for one complete listing of its keys.")
	fs.DurationVar(&f.KMS.RequestTimeout, "kms-request-timeout", kms.DefaultRequestTimeout, "The longest one KMS API request may take.")
	fs.Float64Var(&f.KMSQPS, "kms-qps", 10, "The most KMS API calls per second, across all selectors; 0 means no limit.")
	fs.IntVar(&f.KMSBurst, "kms-burst", 20, "The most KMS API calls in a burst above --kms-qps.")
	fs.DurationVar(&f.CoalesceWindow, "coalesce-window", keysource.DefaultCoalesceWindow, "How long one listing answers identical requests of other selectors; keep it well under the smallest refresh interval (10s).")
	fs.StringVar(&f.ClusterResourceNamespace, "cluster-resource-namespace", "", "The namespace of the Secrets of ClusterKmsProviders whose spec.auth.secretRef names none, and of the refresh checkpoint ConfigMap kms-key-sync-schedule; empty means the namespace the operator runs in (outside a cluster, none: no checkpoint).")
	fs.Func("watch-namespaces", "Comma-separated namespaces to watch; empty watches all namespaces.", func(v string) error {
		f.WatchNamespaces = splitList(v)
		return nil
	})
	fs.StringVar(&f.kmsCAFile, "kms-ca-file", "", "A PEM file of CA certificates to trust for KMS and IAM endpoints and the pod identity endpoint, besides the system roots.")
	fs.StringVar(&f.MetadataEndpoint, "metadata-endpoint", identity.DefaultMetadataEndpoint, "The ECS metadata service that ClusterKmsProviders with spec.auth.nodeAgency take the node's credentials from.")
	f.zap.BindFlags(fs)
	config.RegisterFlags(fs)
	return fs
}

func (f flags) validate() error {
	if f.KMSQPS < 0 || f.KMSBurst < 1 {
		return fmt.Errorf("--kms-qps must not be negative and --kms-burst must be at least 1, got %g and %d", f.KMSQPS, f.KMSBurst)
	}
	if f.CoalesceWindow <= 0 || f.CoalesceWindow >= kmsv1alpha1.MinRefreshInterval {
		return fmt.Errorf("--coalesce-window must be positive and under 10s, the smallest refresh interval, got %s", f.CoalesceWindow)
	}
	if f.MaxConcurrentReconciles < 1 {
		return fmt.Errorf("--max-concurrent-reconciles must be at least 1, got %d", f.MaxConcurrentReconciles)
	}
	return nil
}

func main() {
	f, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&f.zap)))
	if os.Getenv("GOGC") == "" {
		// The operator spends little CPU and mostly waits on KMS and the API server; collecting
		// at half the live heap rather than all of it keeps its memory a third lower.
		debug.SetGCPercent(50)
	}
	if err := run(f); err != nil {
		ctrl.Log.Error(err, "Operator stopped")
		os.Exit(1)
	}
}

func run(f flags) error {
	ctrl.Log.Info("Starting kms-key-sync", "version", version, "commit", commit)
	var caBundle []byte
	if f.kmsCAFile != "" {
		var err error
		if caBundle, err = os.ReadFile(f.kmsCAFile); err != nil {
			return fmt.Errorf("reading --kms-ca-file: %w", err)
		}
	}
	transport, err := kms.NewTransport(caBundle)
	if err != nil {
		return fmt.Errorf("--kms-ca-file: %w", err)
	}
	if f.ClusterResourceNamespace == "" {
		f.ClusterResourceNamespace = inClusterNamespace()
	}
	// main exits as soon as the manager stops, so the lease can be handed over at once.
	f.LeaderElectionReleaseOnCancel = true
	f.KMS.Transport = transport
	f.KMS.Logger = ctrl.Log.WithName("kms")
	// CCE Pod Identity names its endpoint and token file in the environment.
	f.PodIdentityURI = os.Getenv(identity.PodIdentityURIEnv)
	f.PodIdentityTokenFile = os.Getenv(identity.PodIdentityTokenFileEnv)

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	mgr, err := operator.New(cfg, f.Options)
	if err != nil {
		return err
	}
	return mgr.Start(ctrl.SetupSignalHandler())
}

// inClusterNamespace is the namespace of the operator's pod, or "" outside a cluster.
func inClusterNamespace() string {
	raw, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(raw))
}

// hostList is a flag of comma-separated host patterns (see identity.CheckHostPattern).
type hostList struct{ hosts *[]string }

func (h hostList) String() string {
	if h.hosts == nil {
		return ""
	}
	return strings.Join(*h.hosts, ",")
}

func (h hostList) Set(v string) error {
	hosts := splitList(v)
	if len(hosts) == 0 {
		return errors.New("name at least one host")
	}
	for _, p := range hosts {
		if err := identity.CheckHostPattern(p); err != nil {
			return err
		}
	}
	*h.hosts = hosts
	return nil
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
