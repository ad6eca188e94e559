package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

// createWorkers is how many objects the bench creates at the same time.
const createWorkers = 16

// clutterBytes is the size of each unrelated ConfigMap's and Secret's data: large enough that
// caching them would show in the operator's memory.
const clutterBytes = 4096

// seed creates the namespaces, in each one credentials Secret (or, for a keyless scenario, the
// service account the selectors act as), and the scenario's unrelated ConfigMaps and Secrets.
func seed(ctx context.Context, cl *cluster, sc scenario) error {
	for _, ns := range sc.namespaceNames() {
		if err := cl.client.Create(ctx, testkit.Namespace(ns)); err != nil {
			return fmt.Errorf("creating namespace %s: %w", ns, err)
		}
		var auth client.Object = testkit.TokenSecret(ns, testkit.CredentialsSecretName, benchToken)
		if sc.keyless {
			auth = serviceAccount(ns)
		}
		if err := cl.client.Create(ctx, auth); err != nil {
			return fmt.Errorf("creating %T %s/%s: %w", auth, ns, auth.GetName(), err)
		}
	}
	if sc.clutter == 0 {
		return nil
	}
	progress("creating %d unrelated ConfigMaps and %d unrelated Secrets of %d bytes each", sc.clutter, sc.clutter, clutterBytes)
	started := time.Now()
	filler := strings.Repeat("x", clutterBytes)
	err := parallel(ctx, 2*sc.clutter, func(ctx context.Context, i int) error {
		meta := metav1.ObjectMeta{Namespace: namespaceName(i % sc.namespaces), Name: fmt.Sprintf("unrelated-%05d", i/2)}
		var obj client.Object = &corev1.ConfigMap{ObjectMeta: meta, Data: map[string]string{"blob": filler}}
		if i%2 == 1 {
			obj = &corev1.Secret{ObjectMeta: meta, StringData: map[string]string{"blob": filler}}
		}
		return cl.client.Create(ctx, obj)
	})
	if err != nil {
		return fmt.Errorf("creating unrelated objects: %w", err)
	}
	progress("created them in %s", since(started))
	return nil
}

// createSelectors applies the scenario's selectors, pointed at the emulator and refreshed every
// sc.refresh, each changed by mutate.
func createSelectors(ctx context.Context, cl *cluster, sc scenario, endpoint string, mutate ...func(*kmsv1alpha1.KmsKeySelector)) error {
	refs := sc.selectorRefs()
	return parallel(ctx, len(refs), func(ctx context.Context, i int) error {
		ref := refs[i]
		var tags []kmsv1alpha1.TagSelector
		for _, t := range ref.filter.Tags {
			tags = append(tags, testkit.Tag(t.Key, t.Values...))
		}
		sel := testkit.Selector(ref.key.Namespace, ref.key.Name, endpoint,
			append([]func(*kmsv1alpha1.KmsKeySelector){testkit.WithTags(tags...), testkit.WithRefreshInterval(sc.refresh)}, mutate...)...)
		if err := cl.client.Create(ctx, sel); err != nil {
			return fmt.Errorf("creating selector %s: %w", ref.key, err)
		}
		return nil
	})
}

// parallel calls fn for 0..n-1 on createWorkers goroutines and returns the first error.
func parallel(ctx context.Context, n int, fn func(context.Context, int) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(createWorkers)
	for i := range n {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return fn(gctx, i) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}
