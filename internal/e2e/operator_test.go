package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/operator"
)

// childEnv carries a childConfig, as JSON, to a child process that runs the operator.
const childEnv = "KMS_KEY_SYNC_E2E_OPERATOR"

// childConfig is what a child operator process runs with.
type childConfig struct {
	// Host, CAData, CertData and KeyData reach the envtest API server.
	Host                      string
	CAData, CertData, KeyData []byte

	LeaderElection          bool
	LeaderElectionNamespace string
	WatchNamespaces         []string
	// TrustCA is the PEM the KMS transport trusts besides the system roots, as --kms-ca-file.
	TrustCA []byte
	// LogLevel is the zap level: -10 logs V(10) and everything above.
	LogLevel int
	// MetricsFile receives the metrics registry, in the text format, when the operator stops.
	MetricsFile string
	// MetricsAddr serves the metrics over plain HTTP while the operator runs; "" serves none.
	MetricsAddr string
	// RequestTimeout bounds each KMS request.
	RequestTimeout time.Duration
}

// defaultChild is a child of the suite's API server with the envtest suite's timings.
func defaultChild() childConfig {
	return childConfig{
		Host: cfg.Host, CAData: cfg.CAData, CertData: cfg.CertData, KeyData: cfg.KeyData,
		TrustCA: tlsCA, LogLevel: -1, RequestTimeout: 10 * time.Second,
	}
}

// runChild runs the operator until SIGTERM or SIGINT. It prints "ELECTED <unix nanos>" when it
// starts leading (at once without leader election) and "STOPPED" when the manager has returned.
func runChild(raw string) int {
	var c childConfig
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		fmt.Fprintln(os.Stderr, "child config:", err)
		return 2
	}
	// Development mode does not sample: every line is written.
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(true), zap.JSONEncoder(), zap.Level(zapcore.Level(c.LogLevel))))
	transport, err := kms.NewTransport(c.TrustCA)
	if err != nil {
		fmt.Fprintln(os.Stderr, "transport:", err)
		return 2
	}
	restCfg := &rest.Config{Host: c.Host, TLSClientConfig: rest.TLSClientConfig{CAData: c.CAData, CertData: c.CertData, KeyData: c.KeyData}}
	metricsAddr := c.MetricsAddr
	if metricsAddr == "" {
		metricsAddr = "0"
	}
	mgr, err := operator.New(restCfg, operator.Options{
		MetricsAddr:             metricsAddr,
		ProbeAddr:               "0",
		LeaderElection:          c.LeaderElection,
		LeaderElectionNamespace: c.LeaderElectionNamespace,
		// As main.go sets it: the child process exits when its manager stops.
		LeaderElectionReleaseOnCancel: true,
		WatchNamespaces:               c.WatchNamespaces,
		MaxConcurrentReconciles:       2,
		SyncTimeout:                   30 * time.Second,
		Backoff:                       300 * time.Millisecond,
		KMS: kms.Config{
			Transport:      http.RoundTripper(transport),
			RequestTimeout: c.RequestTimeout,
			Retry:          kms.RetryPolicy{MaxAttempts: 2, BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond},
			Logger:         ctrl.Log.WithName("kms"),
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "operator:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		select {
		case <-mgr.Elected():
			fmt.Printf("ELECTED %d\n", time.Now().UnixNano())
		case <-ctx.Done():
		}
	}()
	runErr := mgr.Start(ctx)
	if c.MetricsFile != "" {
		if err := writeMetrics(c.MetricsFile); err != nil {
			fmt.Fprintln(os.Stderr, "metrics:", err)
		}
	}
	fmt.Println("STOPPED")
	if runErr != nil {
		fmt.Fprintln(os.Stderr, "manager:", runErr)
		return 1
	}
	return 0
}

// writeMetrics gathers controller-runtime's registry, where the operator's metrics live, and
// writes it in the Prometheus text format.
func writeMetrics(path string) error {
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := expfmt.NewEncoder(f, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range families {
		if err := enc.Encode(mf); err != nil {
			_ = f.Close()
			return err
		}
	}
	return f.Close()
}

// operatorProcess is a child process running the operator.
type operatorProcess struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}

	mu      sync.Mutex
	elected time.Time
	stopped bool
}

// startOperator starts an operator process; it is killed when the test ends, if still running.
func startOperator(name string, c childConfig) *operatorProcess {
	GinkgoHelper()
	raw, err := json.Marshal(c)
	Expect(err).NotTo(HaveOccurred())
	p := &operatorProcess{name: name, logPath: filepath.Join(GinkgoT().TempDir(), name+".log"), exited: make(chan struct{})}
	logFile, err := os.Create(p.logPath)
	Expect(err).NotTo(HaveOccurred())
	p.cmd = exec.Command(os.Args[0])
	p.cmd.Env = append(os.Environ(), childEnv+"="+string(raw))
	p.cmd.Stderr = logFile
	stdout, err := p.cmd.StdoutPipe()
	Expect(err).NotTo(HaveOccurred())
	Expect(p.cmd.Start()).To(Succeed())
	go func() {
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			line := scanner.Text()
			p.mu.Lock()
			if at, ok := strings.CutPrefix(line, "ELECTED "); ok {
				if n, err := strconv.ParseInt(at, 10, 64); err == nil {
					p.elected = time.Unix(0, n)
				}
			}
			if line == "STOPPED" {
				p.stopped = true
			}
			p.mu.Unlock()
		}
		_ = p.cmd.Wait()
		_ = logFile.Close()
		close(p.exited)
	}()
	DeferCleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if CurrentSpecReport().Failed() {
			GinkgoWriter.Printf("--- log of operator %s ---\n%s\n", p.name, tail(p.log(), 200))
		}
	})
	return p
}

// electedAt is when the process started leading; zero if it has not.
func (p *operatorProcess) electedAt() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.elected
}

// stop sends sig and waits until the process has exited; it reports whether the manager stopped
// gracefully.
func (p *operatorProcess) stop(sig syscall.Signal) bool {
	GinkgoHelper()
	Expect(p.cmd.Process.Signal(sig)).To(Succeed())
	Eventually(p.exited, 40*time.Second).Should(BeClosed())
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopped
}

// log returns what the process wrote to stderr: its log.
func (p *operatorProcess) log() string {
	raw, err := os.ReadFile(p.logPath)
	Expect(err).NotTo(HaveOccurred())
	return string(raw)
}

func tail(s string, lines int) string {
	all := strings.Split(s, "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}
