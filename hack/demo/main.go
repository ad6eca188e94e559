// Command demo runs kms-key-sync end to end with nothing but Go: a local control plane (envtest's
// etcd and kube-apiserver), the KMS emulator and the operator, all in this one process. It
// applies config/samples/, shows the ConfigMap the operator writes, disables a key in the
// emulator and shows the operator catch up.
//
//	make demo      # run the demo and clean up
//	make demo-up   # the same, then keep everything running for kubectl until Ctrl-C
//
// The Makefile builds the control plane binaries and passes them in KUBEBUILDER_ASSETS.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/operator"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

const (
	namespace    = "demo"
	demoToken    = "kms-key-sync-demo-token"
	stepsTimeout = 2 * time.Minute
	waitTimeout  = 30 * time.Second
	pollInterval = 20 * time.Millisecond
)

type options struct {
	root        string // the repository root, which holds config/ and hack/
	keepRunning bool   // after the steps, serve kubectl until interrupted
	kubeconfig  string // where keepRunning writes the kubeconfig, relative to root
	verbose     bool
}

// result is what a run observed, for the smoke test.
type result struct {
	applyToConfigMap time.Duration
	disabledKey      string
	data             map[string]string // the ConfigMap once the key showed as Disabled
	eventReasons     []string
}

// demo holds what the steps start; cleanup stops it in reverse order.
type demo struct {
	o        options
	out      io.Writer
	fail     context.CancelCauseFunc // ends the steps early, when the operator stops on its own
	env      *envtest.Environment
	cfg      *rest.Config
	client   client.Client
	kms      *kmstest.Server
	cleanups []func() error
}

func main() {
	o := options{root: ".", kubeconfig: filepath.Join("bin", "demo.kubeconfig")}
	flag.BoolVar(&o.keepRunning, "keep-running", false, "keep the control plane, emulator and operator running for kubectl until Ctrl-C")
	flag.BoolVar(&o.verbose, "v", false, "show the operator's and the emulator's logs")
	flag.Parse()
	level := zapcore.ErrorLevel
	if o.verbose {
		level = zapcore.InfoLevel
	}
	ctrl.SetLogger(zap.New(zap.Level(level), zap.WriteTo(os.Stderr)))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	start := time.Now()
	_, err := run(ctx, o, os.Stdout)
	interrupted := context.Cause(ctx)
	stop()
	switch {
	case err != nil && interrupted != nil:
		fmt.Fprintf(os.Stderr, "\ndemo interrupted (%v); everything it started is stopped\n", interrupted)
		os.Exit(130)
	case err != nil:
		fmt.Fprintf(os.Stderr, "\ndemo failed: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("\nDemo finished in %s; nothing is left running.\n", time.Since(start).Round(100*time.Millisecond))
}

// run performs every step, then cleans up whatever was started, even after a failure.
func run(ctx context.Context, o options, out io.Writer) (res result, err error) {
	interrupted := ctx
	failed, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	ctx, cancel := context.WithTimeoutCause(failed, stepsTimeout, fmt.Errorf("the demo did not finish within %s", stepsTimeout))
	defer cancel()

	d := &demo{o: o, out: out, fail: fail}
	defer func() { err = errors.Join(err, d.cleanup()) }()

	s, err := loadSamples(filepath.Join(o.root, "config", "samples"))
	if err != nil {
		return res, err
	}
	if err := d.startControlPlane(ctx); err != nil {
		return res, err
	}
	if err := d.startEmulator(s.selector.Spec.Provider.ProjectID); err != nil {
		return res, err
	}
	if err := d.startOperator(ctx); err != nil {
		return res, err
	}
	sel, applied, err := d.applySamples(ctx, s)
	if err != nil {
		return res, err
	}
	if res.data, res.applyToConfigMap, err = d.waitSynced(ctx, sel, applied); err != nil {
		return res, err
	}
	if res.disabledKey, res.data, err = d.disableKey(ctx, sel, res.data); err != nil {
		return res, err
	}
	if res.eventReasons, err = d.printEvents(ctx, sel, res.disabledKey); err != nil {
		return res, err
	}
	if o.keepRunning {
		return res, d.serveUntilInterrupted(interrupted, failed, sel, res.data)
	}
	return res, nil
}

func (d *demo) step(n int, format string, args ...any) {
	fmt.Fprintf(d.out, "\n[%d/7] %s\n", n, fmt.Sprintf(format, args...))
}

func (d *demo) printf(format string, args ...any) {
	fmt.Fprintf(d.out, "      "+format+"\n", args...)
}

// startControlPlane starts etcd and kube-apiserver and installs the CRD (step 1).
func (d *demo) startControlPlane(ctx context.Context) error {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		return errors.New("KUBEBUILDER_ASSETS is not set: run `make demo`, or set it to the directory hack/setup-envtest.sh prints")
	}
	d.step(1, "Starting a local control plane (envtest: etcd and kube-apiserver from %s)", assets)
	started := time.Now()
	d.env = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(d.o.root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                operator.Scheme,
	}
	d.cleanups = append(d.cleanups, func() error {
		d.printf("control plane stopped")
		return d.env.Stop()
	})
	cfg, err := d.env.Start()
	if err != nil {
		return fmt.Errorf("starting the control plane: %w", err)
	}
	if err := context.Cause(ctx); err != nil {
		return err
	}
	d.cfg = cfg
	if d.client, err = client.New(cfg, client.Options{Scheme: operator.Scheme}); err != nil {
		return fmt.Errorf("creating a client: %w", err)
	}
	d.printf("API server at %s, up in %s", cfg.Host, time.Since(started).Round(100*time.Millisecond))
	for _, crd := range d.env.CRDs {
		d.printf("installed CRD %s", crd.Name)
	}
	return nil
}

// startEmulator serves the sample keys to callers presenting the demo token (step 2).
func (d *demo) startEmulator(projectID string) error {
	keysFile := filepath.Join(d.o.root, "hack", "kms-emulator", "sample-keys.json")
	d.step(2, "Starting the KMS emulator with the keys of %s", keysFile)
	opts := []kmstest.Option{kmstest.WithProjectID(projectID), kmstest.WithToken(demoToken)}
	if d.o.verbose {
		opts = append(opts, kmstest.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
	}
	d.kms = kmstest.NewServer(opts...)
	d.cleanups = append(d.cleanups, func() error {
		d.kms.Close()
		d.printf("KMS emulator stopped")
		return nil
	})
	if err := d.kms.LoadKeysFile(keysFile); err != nil {
		return fmt.Errorf("seeding the emulator: %w", err)
	}
	d.printf("KMS API at %s: project %s, %d keys, accepts the token %q", d.kms.URL, projectID, d.kms.KeyCount(), demoToken)
	return nil
}

// startOperator runs the operator as main.go does, through operator.New (step 3).
func (d *demo) startOperator(ctx context.Context) error {
	d.step(3, "Starting the operator (operator.New, allowing the emulator's plain http:// endpoint)")
	mgr, err := operator.New(d.cfg, operator.Options{
		AllowInsecureEndpoints:  true,
		MetricsAddr:             "0",
		ProbeAddr:               "0",
		MaxConcurrentReconciles: 2,
		SyncTimeout:             20 * time.Second,
		KMS:                     kms.Config{RequestTimeout: 5 * time.Second},
	})
	if err != nil {
		return err
	}
	// Register the informers the controller watches, so that WaitForCacheSync below waits for
	// them: the selector is applied to an operator that is ready, as in a real cluster.
	for _, obj := range []client.Object{&kmsv1alpha1.KmsKeySelector{}, &corev1.ConfigMap{}} {
		if _, err := mgr.GetCache().GetInformer(ctx, obj); err != nil {
			return fmt.Errorf("preparing the operator's cache: %w", err)
		}
	}
	opCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		err := mgr.Start(opCtx)
		if err != nil {
			d.fail(fmt.Errorf("the operator stopped: %w", err))
		}
		done <- err
	}()
	d.cleanups = append(d.cleanups, func() error {
		cancel()
		err := <-done
		d.printf("operator stopped")
		return err
	})
	started := time.Now()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		return fmt.Errorf("waiting for the operator's cache: %w", context.Cause(ctx))
	}
	d.printf("operator running, its cache synced in %s", time.Since(started).Round(time.Millisecond))
	return nil
}

// cleanup stops what the steps started, last started first (step 7).
func (d *demo) cleanup() error {
	if len(d.cleanups) == 0 {
		return nil
	}
	d.step(7, "Cleaning up")
	var errs []error
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		errs = append(errs, d.cleanups[i]())
	}
	d.cleanups = nil
	return errors.Join(errs...)
}

// poll calls check every pollInterval until it reports done or fails, for at most waitTimeout.
func poll(ctx context.Context, what string, check func(context.Context) (bool, error)) error {
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		done, err := check(ctx)
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("waiting for %s: %w", what, context.Cause(ctx))
		case err != nil:
			return fmt.Errorf("waiting for %s: %w", what, err)
		case done:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, context.Cause(ctx))
		case <-deadline.C:
			return fmt.Errorf("waiting for %s: not done within %s", what, waitTimeout)
		case <-ticker.C:
		}
	}
}
