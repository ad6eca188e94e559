// Command demo runs kms-key-sync end to end with nothing but Go: a local control plane (envtest's
// etcd and kube-apiserver), the KMS emulator over HTTPS and the operator, all in this one process,
// the operator as a user of its own bound to the generated RBAC. It applies config/samples/, shows
// the ConfigMap the operator writes, disables a key in the emulator and shows the operator catch
// up.
//
//	make demo      # run the demo and clean up
//	make demo-up   # the same, then keep everything running for kubectl until Ctrl-C
//
// The Makefile builds the control plane binaries and passes them in KUBEBUILDER_ASSETS; without
// it, the demo takes them from bin/k8s.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/operator"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
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
	kubeconfig  string // where keepRunning writes the kubeconfig, relative to root unless absolute
	kmsCA       string // where keepRunning writes the emulator's CA, relative to root unless absolute
	verbose     bool
}

// result is what a run observed, for the smoke test.
type result struct {
	applyToConfigMap time.Duration
	disabledKey      string
	data             map[string]string // the ConfigMap once the key showed as Disabled
	eventReasons     []string
	// shared are the selectors of step 7, which list through one ClusterKmsProvider.
	shared []*kmsv1alpha1.KmsKeySelector
	// keyless is what step 8 saw of a selector that lists with a workload identity.
	keyless keylessResult
}

// demo holds what the steps start; cleanup stops it in reverse order.
type demo struct {
	o      options
	out    io.Writer
	fail   context.CancelCauseFunc // ends the steps early, when the operator stops on its own
	env    *testkit.Env
	client client.Client // the administrator's
	kms    *kmstest.Server
	// metricsURL is where the operator serves its metrics, on localhost.
	metricsURL string
	cleanups   []func() error
}

func main() {
	o := options{root: ".", kubeconfig: filepath.Join("bin", "demo.kubeconfig"), kmsCA: filepath.Join("bin", "demo-kms-ca.pem")}
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
	m, err := loadMultiTeam(filepath.Join(o.root, "config", "samples", "multi-team"))
	if err != nil {
		return res, err
	}
	k, err := loadKeyless(filepath.Join(o.root, "config", "samples", "keyless"))
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
	if res.shared, err = d.shareProvider(ctx, m, s.selector.Spec.Provider.ProjectID); err != nil {
		return res, err
	}
	if res.keyless, err = d.goKeyless(ctx, k, s.selector.Spec.Provider.ProjectID); err != nil {
		return res, err
	}
	if o.keepRunning {
		return res, d.serveUntilInterrupted(interrupted, failed, sel, res.data)
	}
	return res, nil
}

func (d *demo) step(n int, format string, args ...any) {
	fmt.Fprintf(d.out, "\n[%d/%d] %s\n", n, steps, fmt.Sprintf(format, args...))
}

func (d *demo) printf(format string, args ...any) {
	fmt.Fprintf(d.out, "      "+format+"\n", args...)
}

// startControlPlane starts etcd and kube-apiserver, installs the CRD and binds the operator's
// user to the generated RBAC (step 1).
func (d *demo) startControlPlane(ctx context.Context) error {
	d.step(1, "Starting a local control plane (envtest: etcd and kube-apiserver)")
	started := time.Now()
	env, err := testkit.StartEnv(testkit.EnvOptions{Root: d.o.root})
	if err != nil {
		return err
	}
	d.env, d.client = env, env.Client
	d.cleanups = append(d.cleanups, func() error {
		d.printf("control plane stopped")
		return d.env.Stop()
	})
	if err := context.Cause(ctx); err != nil {
		return err
	}
	d.printf("API server at %s, up in %s", env.Config.Host, time.Since(started).Round(100*time.Millisecond))
	for _, crd := range env.Environment.CRDs {
		d.printf("installed CRD %s", crd.Name)
	}
	d.printf("user %s bound to %s only", env.OperatorUser, testkit.ManagerRoleFile)
	return nil
}

// startEmulator serves the sample keys over HTTPS to callers presenting the demo token (step 2).
func (d *demo) startEmulator(projectID string) error {
	keysFile := filepath.Join(d.o.root, "hack", "kms-emulator", "sample-keys.json")
	d.step(2, "Starting the KMS emulator with the keys of %s", keysFile)
	opts := []kmstest.Option{kmstest.WithProjectID(projectID)}
	if d.o.verbose {
		opts = append(opts, kmstest.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
	}
	d.kms = testkit.NewEmulator(demoToken, opts...)
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

// startOperator runs the operator as main.go does, through operator.New, as its own user
// (step 3).
func (d *demo) startOperator(ctx context.Context) error {
	d.step(3, "Starting the operator (operator.New, as %s, trusting the emulator's certificate)", d.env.OperatorUser)
	metricsAddr, err := freeLocalAddress()
	if err != nil {
		return err
	}
	o, err := testkit.OperatorOptions(metricsAddr)
	if err != nil {
		return err
	}
	d.metricsURL = "http://" + metricsAddr + "/metrics"
	o.MaxConcurrentReconciles = 2
	o.SyncTimeout = 20 * time.Second
	o.KMS.RequestTimeout = 5 * time.Second
	mgr, err := operator.New(d.env.OperatorConfig, o)
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
	running := testkit.StartManager(mgr)
	go func() {
		<-running.Done()
		if err := running.Err(); err != nil {
			d.fail(fmt.Errorf("the operator stopped: %w", err))
		}
	}()
	d.cleanups = append(d.cleanups, func() error {
		err := running.Stop()
		d.printf("operator stopped")
		return err
	})
	started := time.Now()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		return fmt.Errorf("waiting for the operator's cache: %w", context.Cause(ctx))
	}
	d.printf("operator running, its cache synced in %s; metrics at %s", time.Since(started).Round(time.Millisecond), d.metricsURL)
	return nil
}

// freeLocalAddress returns an address on 127.0.0.1 with a port that was free a moment ago: the
// metrics server binds it itself, and must be told the port to print its URL.
func freeLocalAddress() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a port for the metrics: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// steps is the number of steps, the last being the cleanup.
const steps = 9

// cleanup stops what the steps started, last started first (the last step).
func (d *demo) cleanup() error {
	if len(d.cleanups) == 0 {
		return nil
	}
	d.step(steps, "Cleaning up")
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
