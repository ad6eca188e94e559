package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

// operatorProc is the operator binary running as a child process, so that its memory is its own.
type operatorProc struct {
	cmd        *exec.Cmd
	metricsURL string
	pprofURL   string
	log        *os.File
	ready      chan struct{} // closed once the controller's workers started
	exited     chan struct{} // closed once the process exited
	exitErr    error
	stopOnce   sync.Once
	stopErr    error
}

// startOperator runs the operator as its own user of the cluster, trusting the KMS emulator, with
// its metrics and pprof on free local ports, its log in o.outDir, and the scenario's extraArgs.
// Its own namespace, as in a cluster, holds the refresh checkpoint, whose writes count as its.
func startOperator(o options, sc scenario, cl *cluster, extraArgs ...string) (*operatorProc, error) {
	addrs, err := testkit.FreeLoopbackAddresses(2)
	if err != nil {
		return nil, err
	}
	ownNamespace := "bench-" + sc.name + "-system"
	if err := cl.client.Create(context.Background(), testkit.Namespace(ownNamespace)); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating namespace %s: %w", ownNamespace, err)
	}
	metricsAddr, pprofAddr := addrs[0], addrs[1]
	args := []string{
		"--kubeconfig=" + cl.kubeconfig,
		"--kms-ca-file=" + cl.kmsCA,
		"--metrics-bind-address=" + metricsAddr,
		"--metrics-secure=false",
		"--health-probe-bind-address=0",
		"--pprof-bind-address=" + pprofAddr,
		"--kms-qps=" + strconv.FormatFloat(o.kmsQPS, 'f', -1, 64),
		"--kms-burst=" + strconv.Itoa(o.kmsBurst),
		"--max-concurrent-reconciles=" + strconv.Itoa(o.concurrency),
		"--cluster-resource-namespace=" + ownNamespace,
	}
	args = append(args, extraArgs...)
	logPath := filepath.Join(o.outDir, sc.name+"-operator.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p := &operatorProc{
		metricsURL: "http://" + metricsAddr + "/metrics",
		pprofURL:   "http://" + pprofAddr + "/debug/pprof/",
		log:        logFile,
		ready:      make(chan struct{}),
		exited:     make(chan struct{}),
	}
	var out io.Writer = logFile
	if o.verbose {
		out = io.MultiWriter(logFile, os.Stderr)
	}
	p.cmd = exec.Command(o.manager, args...)
	p.cmd.Env = append(os.Environ(), o.operatorEnv...)
	p.cmd.Stdout = out
	p.cmd.Stderr = &lineWatcher{w: out, needle: `"Starting workers"`, found: p.ready}
	// Its own process group keeps a Ctrl-C at the terminal from reaching it before the bench
	// stops it in order; Pdeathsig stops it should the bench die without cleaning up.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting the operator: %w", err)
	}
	go func() {
		p.exitErr = p.cmd.Wait()
		close(p.exited)
	}()
	cmdline := strings.Join(slices.Concat(o.operatorEnv, []string{o.manager}, args), " ")
	progress("operator started (pid %d): %s; log in %s", p.cmd.Process.Pid, cmdline, logPath)
	return p, nil
}

// waitReady waits until the controller's caches synced and its workers started.
func (p *operatorProc) waitReady(ctx context.Context, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.ready:
		return nil
	case <-p.exited:
		return fmt.Errorf("the operator exited before it was ready: %v (see %s)", p.exitErr, p.log.Name())
	case <-timer.C:
		return fmt.Errorf("the operator was not ready within %s (see %s)", timeout, p.log.Name())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stop sends SIGTERM, and SIGKILL if the operator has not exited 15 seconds later.
func (p *operatorProc) stop() error {
	p.stopOnce.Do(func() {
		select {
		case <-p.exited:
			p.stopErr = fmt.Errorf("the operator had exited on its own: %v (see %s)", p.exitErr, p.log.Name())
		default:
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.exited:
			case <-time.After(15 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.exited
				p.stopErr = errors.New("the operator did not stop within 15s of SIGTERM; killed it")
			}
		}
		p.stopErr = errors.Join(p.stopErr, p.log.Close())
	})
	return p.stopErr
}

// peakRSS reads VmHWM, the process's peak resident set, from /proc.
func (p *operatorProc) peakRSS() (uint64, error) {
	return procStatus(p.cmd.Process.Pid, "VmHWM")
}

func procStatus(pid int, field string) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// metrics scrapes the named metrics from the operator's metrics endpoint. Asking for a few names
// keeps the scrape cheap: the operator exports some series per selector.
func (p *operatorProc) metrics(ctx context.Context, names ...string) (testkit.Metrics, error) {
	m, err := testkit.ScrapeMetrics(ctx, nil, p.metricsURL, names...)
	if err != nil {
		return nil, fmt.Errorf("reading the operator's metrics: %w", err)
	}
	return m, nil
}

// counter returns the sum of a metric's series (a counter or a gauge).
func (p *operatorProc) counter(ctx context.Context, name string) (float64, error) {
	m, err := p.metrics(ctx, name)
	if err != nil {
		return 0, err
	}
	return m.Sum(name, nil), nil
}

// listingCounts are the operator's listings that called KMS: all of them, and those begun to
// refresh selectors already synced.
type listingCounts struct{ total, refreshes int }

func (p *operatorProc) listings(ctx context.Context) (listingCounts, error) {
	const name = "kms_key_sync_listings_total"
	m, err := p.metrics(ctx, name)
	if err != nil {
		return listingCounts{}, err
	}
	return listingCounts{total: int(m.Sum(name, nil)), refreshes: int(m.Sum(name, map[string]string{"trigger": "refresh"}))}, nil
}

// apiWrites returns how many write requests the operator has sent the API server, whatever the
// resource or the answer, from client-go's request counter (the method is POST, PUT, PATCH or
// DELETE). Unlike the API server's counters it leaves out every other client, the API server's
// own bookkeeping included, and it counts any object the operator writes, of any kind.
func (p *operatorProc) apiWrites(ctx context.Context) (int, error) {
	const name = "rest_client_requests_total"
	m, err := p.metrics(ctx, name)
	if err != nil {
		return 0, err
	}
	n := 0.0
	for _, s := range m.Series(name, nil) {
		if writeVerbs[s.Labels["method"]] {
			n += s.Value
		}
	}
	return int(n), nil
}

// cpuProfile takes a CPU profile of length d into path, in the background.
func (p *operatorProc) cpuProfile(ctx context.Context, path string, d time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		u := fmt.Sprintf("%sprofile?seconds=%d", p.pprofURL, int(d.Seconds()))
		done <- saveProfile(ctx, http.DefaultClient, u, path, "operator CPU")
	}()
	return done
}

// heapProfile saves the heap profile (after a GC) into path.
func (p *operatorProc) heapProfile(ctx context.Context, path string) error {
	return saveProfile(ctx, http.DefaultClient, p.pprofURL+"heap?gc=1", path, "operator heap")
}

func saveProfile(ctx context.Context, c *http.Client, u, path, kind string) error {
	body, err := httpGet(ctx, c, u)
	if err != nil {
		return fmt.Errorf("taking the %s profile: %w", kind, err)
	}
	if err := os.WriteFile(path, body, 0o644); err != nil {
		return err
	}
	progress("%s profile saved: go tool pprof -top %s", kind, path)
	return nil
}

func httpGet(ctx context.Context, c *http.Client, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", u, resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}

// lineWatcher passes writes through and closes found the first time needle appears.
type lineWatcher struct {
	w      io.Writer
	needle string
	found  chan struct{}
	tail   []byte
	seen   bool
}

func (l *lineWatcher) Write(b []byte) (int, error) {
	if !l.seen {
		l.tail = append(l.tail, b...)
		if bytes.Contains(l.tail, []byte(l.needle)) {
			l.seen = true
			l.tail = nil
			close(l.found)
		} else if keep := len(l.needle); len(l.tail) > keep {
			l.tail = l.tail[len(l.tail)-keep:]
		}
	}
	return l.w.Write(b)
}
