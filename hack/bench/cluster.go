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

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/kms-key-sync/kms-key-sync/internal/operator"
)

// cluster is an envtest control plane with the CRD installed, an admin client for the bench and
// a kubeconfig for the operator.
type cluster struct {
	env        *envtest.Environment
	cfg        *rest.Config // admin
	client     client.Client
	http       *http.Client // admin, for the API server's /metrics
	dir        string       // temporary files: the operator's kubeconfig
	kubeconfig string
}

func startCluster(root string) (*cluster, error) {
	progress("starting the control plane (envtest: etcd and kube-apiserver)")
	started := time.Now()
	c := &cluster{env: &envtest.Environment{
		CRDDirectoryPaths:        []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing:    true,
		Scheme:                   operator.Scheme,
		ControlPlaneStartTimeout: time.Minute,
	}}
	cfg, err := c.env.Start()
	if err != nil {
		// Start can fail half-way with processes running; Stop stops whatever did start.
		_ = c.env.Stop()
		return nil, fmt.Errorf("starting the control plane: %w", err)
	}
	c.cfg = cfg
	if err := c.init(); err != nil {
		return nil, errors.Join(err, c.stop())
	}
	progress("control plane up at %s in %s", cfg.Host, since(started))
	return c, nil
}

func (c *cluster) init() error {
	var err error
	if c.client, err = client.New(c.cfg, client.Options{Scheme: operator.Scheme}); err != nil {
		return fmt.Errorf("creating a client: %w", err)
	}
	if c.http, err = rest.HTTPClientFor(c.cfg); err != nil {
		return fmt.Errorf("creating an HTTP client: %w", err)
	}
	if c.dir, err = os.MkdirTemp("", "kms-key-sync-bench-"); err != nil {
		return err
	}
	// The operator authenticates as a user of its own; system:masters spares the bench the RBAC,
	// which the deploy tests cover.
	user, err := c.env.AddUser(envtest.User{Name: "kms-key-sync-operator", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("adding the operator's user: %w", err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("writing the operator's kubeconfig: %w", err)
	}
	c.kubeconfig = filepath.Join(c.dir, "operator.kubeconfig")
	return os.WriteFile(c.kubeconfig, kubeconfig, 0o600)
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(c.cfg.Host, "/")+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping the API server's metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping the API server's metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parsing the API server's metrics: %w", err)
	}
	out := writeCounts{}
	if f, ok := families["apiserver_request_total"]; ok {
		for _, m := range f.GetMetric() {
			l := labelMap(m.GetLabel())
			if !writeVerbs[l["verb"]] {
				continue
			}
			resource := l["resource"]
			if l["subresource"] != "" {
				resource += "/" + l["subresource"]
			}
			out[resource] += m.GetCounter().GetValue()
		}
	}
	return out, nil
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

// Resources the bench attributes to the operator; other writes (the API server's own leases and
// endpoint slices) are left out.
const (
	resConfigMaps = "configmaps"
	resStatus     = "kmskeyselectors/status"
	resEvents     = "events"
)

func (w writeCounts) get(resource string) int { return int(w[resource]) }

// String lists the writes by resource, the API server's own bookkeeping left out.
func (w writeCounts) String() string {
	var parts []string
	for r, n := range w {
		if r == "leases" || r == "endpointslices" || r == "endpoints" {
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
		url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", strings.TrimSuffix(c.cfg.Host, "/"), int(d.Seconds()))
		done <- saveProfile(ctx, c.http, url, path, "kube-apiserver CPU")
	}()
	return done
}
