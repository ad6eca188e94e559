package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

// cluster is an envtest control plane (testkit.Env: the CRD installed, the operator's user bound
// to the generated RBAC), an admin client for the bench, and files for the operator: its
// kubeconfig, as its own user, and the CA of the KMS emulator.
type cluster struct {
	env        *testkit.Env
	client     client.Client
	http       *http.Client // admin, for the API server's /metrics
	dir        string       // temporary files
	kubeconfig string
	kmsCA      string
}

func startCluster(root string) (*cluster, error) {
	progress("starting the control plane (envtest: etcd and kube-apiserver)")
	started := time.Now()
	env, err := testkit.StartEnv(testkit.EnvOptions{Root: root, StartTimeout: time.Minute})
	if err != nil {
		return nil, err
	}
	c := &cluster{env: env, client: env.Client}
	if err := c.init(); err != nil {
		return nil, errors.Join(err, c.stop())
	}
	progress("control plane up at %s in %s", env.Config.Host, since(started))
	return c, nil
}

func (c *cluster) init() error {
	var err error
	if c.http, err = rest.HTTPClientFor(c.env.Config); err != nil {
		return fmt.Errorf("creating an HTTP client: %w", err)
	}
	if c.dir, err = os.MkdirTemp("", "kms-key-sync-bench-"); err != nil {
		return err
	}
	kubeconfig, err := c.env.OperatorKubeconfig()
	if err != nil {
		return err
	}
	c.kubeconfig = filepath.Join(c.dir, "operator.kubeconfig")
	if err := os.WriteFile(c.kubeconfig, kubeconfig, 0o600); err != nil {
		return err
	}
	c.kmsCA = filepath.Join(c.dir, "kms-ca.pem")
	return os.WriteFile(c.kmsCA, testkit.EmulatorCA(), 0o600)
}

func (c *cluster) stop() error {
	err := c.env.Stop()
	if c.dir != "" {
		err = errors.Join(err, os.RemoveAll(c.dir))
	}
	return err
}

// writeCounts counts API writes (POST, PUT, PATCH, APPLY, DELETE) by resource, subresource
// included ("kmskeyselectors/status").
type writeCounts map[string]float64

var writeVerbs = map[string]bool{"POST": true, "PUT": true, "PATCH": true, "APPLY": true, "DELETE": true}

// apiWrites reads apiserver_request_total from the API server's own /metrics.
func (c *cluster) apiWrites(ctx context.Context) (writeCounts, error) {
	m, err := testkit.ScrapeMetrics(ctx, c.http, c.url("/metrics"))
	if err != nil {
		return nil, fmt.Errorf("reading the API server's metrics: %w", err)
	}
	out := writeCounts{}
	for _, s := range m.Series("apiserver_request_total", nil) {
		if !writeVerbs[s.Labels["verb"]] {
			continue
		}
		resource := s.Labels["resource"]
		if s.Labels["subresource"] != "" {
			resource += "/" + s.Labels["subresource"]
		}
		out[resource] += s.Value
	}
	return out, nil
}

// url is the API server's URL of path.
func (c *cluster) url(path string) string {
	return strings.TrimSuffix(c.env.Config.Host, "/") + path
}

// sub returns the writes made since before.
func (w writeCounts) sub(before writeCounts) writeCounts {
	out := writeCounts{}
	for r, n := range w {
		if d := n - before[r]; d > 0 {
			out[r] = d
		}
	}
	return out
}

// API resources whose writes the bench output counts by name.
const (
	resConfigMaps = "configmaps"
	resStatus     = "kmskeyselectors/status"
)

// controlPlaneResources are what the API server writes on its own (its identity lease, the
// kubernetes service's endpoints), whoever else runs.
var controlPlaneResources = map[string]bool{"leases": true, "endpointslices": true, "endpoints": true}

func (w writeCounts) get(resource string) int { return int(w[resource]) }

// total counts the writes, the API server's own bookkeeping left out.
func (w writeCounts) total() int {
	n := 0.0
	for r, v := range w {
		if !controlPlaneResources[r] {
			n += v
		}
	}
	return int(n)
}

// String lists the writes by resource, the API server's own bookkeeping left out.
func (w writeCounts) String() string {
	var parts []string
	for r, n := range w {
		if controlPlaneResources[r] {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d", r, int(n)))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// cpuProfile takes a CPU profile of the API server of length d into path, in the background.
func (c *cluster) cpuProfile(ctx context.Context, path string, d time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		url := c.url(fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(d.Seconds())))
		done <- saveProfile(ctx, c.http, url, path, "kube-apiserver CPU")
	}()
	return done
}
