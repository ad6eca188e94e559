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
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// createWorkers is how many objects the bench creates at the same time.
const createWorkers = 16

// clutterBytes is the size of each unrelated ConfigMap's and Secret's data: large enough that
// caching them would show in the operator's memory.
const clutterBytes = 4096

// seed creates the namespaces, one credentials Secret in each, and the scenario's unrelated
// ConfigMaps and Secrets.
func seed(ctx context.Context, cl *cluster, sc scenario) error {
	for _, ns := range sc.namespaceNames() {
		if err := cl.client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return fmt.Errorf("creating namespace %s: %w", ns, err)
		}
		secret := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: secretName},
			StringData: map[string]string{kmsv1alpha1.SecretToken: benchToken},
		}
		if err := cl.client.Create(ctx, secret); err != nil {
			return fmt.Errorf("creating secret %s/%s: %w", ns, secretName, err)
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

// createSelectors applies the scenario's selectors, pointed at the emulator.
func createSelectors(ctx context.Context, cl *cluster, sc scenario, endpoint string, refresh time.Duration) error {
	refs := sc.selectorRefs()
	return parallel(ctx, len(refs), func(ctx context.Context, i int) error {
		ref := refs[i]
		sel := &kmsv1alpha1.KmsKeySelector{
			ObjectMeta: metav1.ObjectMeta{Namespace: ref.key.Namespace, Name: ref.key.Name},
			Spec: kmsv1alpha1.KmsKeySelectorSpec{
				Provider: kmsv1alpha1.ProviderSpec{
					Endpoint:             endpoint,
					ProjectID:            kmstest.DefaultProjectID,
					CredentialsSecretRef: kmsv1alpha1.SecretReference{Name: secretName},
				},
				RefreshInterval: &metav1.Duration{Duration: refresh},
			},
		}
		for _, t := range ref.filter.Tags {
			sel.Spec.Tags = append(sel.Spec.Tags, kmsv1alpha1.TagSelector{Key: t.Key, Values: t.Values})
		}
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
