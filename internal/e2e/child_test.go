package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
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
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/kms-key-sync/kms-key-sync/internal/operator"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

// The specs that stop, kill or restart an operator, or hand over between leaders, run each
// operator in a child process: the test binary re-executed with childEnv set.

// childEnv carries a childConfig, as JSON, to a child process that runs the operator.
const childEnv = "KMS_KEY_SYNC_E2E_OPERATOR"

// childConfig is what a child operator process runs with.
type childConfig struct {
	// Kubeconfig authenticates as the operator's user. QPS and Burst, which a kubeconfig cannot
	// hold, limit its client as env.OperatorConfig's are limited.
	Kubeconfig []byte
	QPS        float32
	Burst      int

	LeaderElection          bool
	LeaderElectionNamespace string
	LeaseDuration           time.Duration
	RenewDeadline           time.Duration
	RetryPeriod             time.Duration
	WatchNamespaces         []string
	// MetricsAddr serves the metrics over plain HTTP while the operator runs; "" serves none.
	MetricsAddr string
}

// childOf returns the config of a child operator of the fixture's namespace only, so that
// operators of other specs never meet.
func childOf(f *testkit.Fixture) childConfig {
	GinkgoHelper()
	kubeconfig, err := env.OperatorKubeconfig()
	Expect(err).NotTo(HaveOccurred())
	return childConfig{
		Kubeconfig: kubeconfig, QPS: env.OperatorConfig.QPS, Burst: env.OperatorConfig.Burst,
		WatchNamespaces: []string{f.Namespace},
	}
}

// electingChildOf returns childOf(f) electing a leader in the fixture's namespace, where the
// operator's user is granted leader election.
func electingChildOf(f *testkit.Fixture) childConfig {
	GinkgoHelper()
	Expect(env.GrantLeaderElection(bg(), f.Namespace)).To(Succeed())
	c := childOf(f)
	c.LeaderElection, c.LeaderElectionNamespace = true, f.Namespace
	c.LeaseDuration, c.RenewDeadline, c.RetryPeriod = leaseDuration, renewDeadline, retryPeriod
	return c
}

// runChild runs the operator until SIGTERM or SIGINT, logging JSON to stderr at V(1). It prints
// "ELECTED <unix nanos>" when it starts leading (at once without leader election) and "STOPPED"
// when the manager has returned.
func runChild(raw string) int {
	var c childConfig
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		fmt.Fprintln(os.Stderr, "child config:", err)
		return 2
	}
	ctrl.SetLogger(testkit.JSONLogger(os.Stderr, 1))
	cfg, err := clientcmd.RESTConfigFromKubeConfig(c.Kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubeconfig:", err)
		return 2
	}
	cfg.QPS, cfg.Burst = c.QPS, c.Burst
	metricsAddr := c.MetricsAddr
	if metricsAddr == "" {
		metricsAddr = "0"
	}
	o, err := operatorOptions(metricsAddr, c.WatchNamespaces...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "operator options:", err)
		return 2
	}
	o.LeaderElection, o.LeaderElectionNamespace = c.LeaderElection, c.LeaderElectionNamespace
	o.LeaseDuration, o.RenewDeadline, o.RetryPeriod = c.LeaseDuration, c.RenewDeadline, c.RetryPeriod
	// As main sets it: the process exits when its manager stops.
	o.LeaderElectionReleaseOnCancel = true
	o.KMS.Logger = ctrl.Log.WithName("kms")
	mgr, err := operator.New(cfg, o)
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
	fmt.Println("STOPPED")
	if runErr != nil {
		fmt.Fprintln(os.Stderr, "manager:", runErr)
		return 1
	}
	return 0
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

// startOperator starts an operator process; it is killed when the spec ends, if still running.
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
