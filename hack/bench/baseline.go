package main

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// naivePageSize is the API's default page size, which a hand-written script would keep.
const naivePageSize = 10

// naiveResult is what one refresh of every selector costs the naive way.
type naiveResult struct {
	duration time.Duration
	kmsCalls int64
	writes   writeCounts
}

// runNaive does what a hand-written CronJob does on each run, for every selector: list its keys
// with the project's KMS client at page size 10, without coalescing, and write a ConfigMap of
// "<key id>: <state>" entries with a plain Create or Update, changed or not. One run is one
// refresh cycle; the operator is stopped by then, so every KMS call and API write is the
// baseline's.
func runNaive(ctx context.Context, cl *cluster, emu *emulator, sc scenario, workers int) (naiveResult, error) {
	var r naiveResult
	before, err := cl.apiWrites(ctx)
	if err != nil {
		return r, err
	}
	// One transport for every run, as one CronJob process would reuse its connections.
	transport, err := testkit.EmulatorTransport()
	if err != nil {
		return r, err
	}
	emu.ResetStats()
	start := time.Now()
	refs := sc.selectorRefs()
	var done atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for _, ref := range refs {
		g.Go(func() error {
			if err := naiveSync(gctx, cl, emu.URL, transport, ref); err != nil {
				return fmt.Errorf("%s: %w", ref.key, err)
			}
			done.Add(1)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return r, err
	}
	r.duration = time.Since(start)
	r.kmsCalls = emu.Stats().Total
	after, err := cl.apiWrites(ctx)
	if err != nil {
		return r, err
	}
	r.writes = after.sub(before)
	progress("naive cycle of %d selectors: %s, %d KMS calls, writes: %s",
		done.Load(), r.duration.Round(100*time.Millisecond), r.kmsCalls, r.writes)
	return r, nil
}

func naiveSync(ctx context.Context, cl *cluster, endpoint string, transport http.RoundTripper, ref selectorRef) error {
	c, err := kms.New(kms.Config{
		Endpoint:    endpoint,
		ProjectID:   kmstest.DefaultProjectID,
		Credentials: kms.Credentials{Token: benchToken},
		PageSize:    naivePageSize,
		Transport:   transport,
	})
	if err != nil {
		return err
	}
	keys, err := c.ListKeys(ctx, ref.filter)
	if err != nil {
		return err
	}
	data := make(map[string]string, len(keys))
	for _, k := range keys {
		data[k.ID] = k.State.String()
	}
	cm := &corev1.ConfigMap{}
	key := types.NamespacedName{Namespace: ref.key.Namespace, Name: "naive-" + ref.key.Name}
	switch err := cl.client.Get(ctx, key, cm); {
	case apierrors.IsNotFound(err):
		cm.Namespace, cm.Name, cm.Data = key.Namespace, key.Name, data
		return cl.client.Create(ctx, cm)
	case err != nil:
		return err
	}
	cm.Data = data
	return cl.client.Update(ctx, cm)
}
