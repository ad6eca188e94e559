package main

import (
	"context"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

// tenantLabel is the label the multi-team sample's ClusterKmsProvider selects namespaces by.
const tenantLabel = "kms.keysync.dev/tenant"

// multiTeam is what the demo takes of config/samples/multi-team: the ClusterKmsProvider and the
// selectors that refer to it.
type multiTeam struct {
	provider  *kmsv1alpha1.ClusterKmsProvider
	selectors []*kmsv1alpha1.KmsKeySelector
}

func loadMultiTeam(dir string) (multiTeam, error) {
	var m multiTeam
	objs, err := readSamples(dir)
	if err != nil {
		return m, err
	}
	for _, obj := range objs {
		switch o := obj.(type) {
		case *kmsv1alpha1.ClusterKmsProvider:
			m.provider = o
		case *kmsv1alpha1.KmsKeySelector:
			if o.Spec.ProviderRef != nil && o.Spec.ProviderRef.Kind == kmsv1alpha1.KindClusterKmsProvider {
				m.selectors = append(m.selectors, o)
			}
		}
	}
	if m.provider == nil || len(m.selectors) == 0 || m.provider.Spec.Auth.SecretRef == nil {
		return m, fmt.Errorf("%s must list a ClusterKmsProvider with a secretRef and selectors that refer to it", dir)
	}
	return m, nil
}

// shareProvider applies the multi-team samples' ClusterKmsProvider, its Secret and the selectors
// of the team namespaces it allows, pointed at the emulator, and shows them synced (step 7).
func (d *demo) shareProvider(ctx context.Context, m multiTeam, projectID string) ([]*kmsv1alpha1.KmsKeySelector, error) {
	d.step(7, "Sharing one ClusterKmsProvider with the team namespaces it allows (config/samples/multi-team/)")
	p := m.provider.DeepCopy()
	ref := p.Spec.Auth.SecretRef
	if err := d.ensureNamespace(ctx, ref.Namespace, nil); err != nil {
		return nil, err
	}
	secret := testkit.TokenSecret(ref.Namespace, ref.Name, demoToken)
	if err := d.client.Create(ctx, secret); err != nil {
		return nil, fmt.Errorf("creating secret %s: %w", ref.Name, err)
	}
	d.printf("secret/%s created in %s, the platform team's namespace, holding the demo token", ref.Name, ref.Namespace)
	p.Spec.Endpoint, p.Spec.ProjectID = d.kms.URL, projectID
	if err := d.client.Create(ctx, p); err != nil {
		return nil, fmt.Errorf("creating ClusterKmsProvider %s: %w", p.Name, err)
	}
	d.printf("clusterkmsprovider.kms.keysync.dev/%s created, allowing namespaces labelled %s=true", p.Name, tenantLabel)

	var sels []*kmsv1alpha1.KmsKeySelector
	for _, s := range m.selectors {
		if err := d.ensureNamespace(ctx, s.Namespace, map[string]string{tenantLabel: "true"}); err != nil {
			return nil, err
		}
		sel := s.DeepCopy()
		if err := d.client.Create(ctx, sel); err != nil {
			return nil, fmt.Errorf("creating selector %s/%s: %w", sel.Namespace, sel.Name, err)
		}
		d.printf("kmskeyselector.kms.keysync.dev/%s created in %s", sel.Name, sel.Namespace)
		sels = append(sels, sel)
	}
	for _, sel := range sels {
		err := poll(ctx, "selector "+sel.Namespace+"/"+sel.Name+" to be Ready", func(ctx context.Context) (bool, error) {
			if err := d.client.Get(ctx, client.ObjectKeyFromObject(sel), sel); err != nil {
				return false, err
			}
			c := testkit.ReadyCondition(sel)
			return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == sel.Generation, nil
		})
		if err != nil {
			return nil, fmt.Errorf("%w; selector: %s", err, d.readyCondition(ctx, sel))
		}
	}
	fmt.Fprintf(d.out, "\n      $ kubectl get clusterkmsproviders,kks -A\n")
	group := "/apis/" + kmsv1alpha1.GroupVersion.String()
	if err := d.printTable(ctx, group+"/clusterkmsproviders"); err != nil {
		return nil, err
	}
	fmt.Fprintln(d.out)
	if err := d.printTable(ctx, group+"/kmskeyselectors"); err != nil {
		return nil, err
	}
	for _, sel := range sels {
		if len(sel.Spec.Target.Data) == 0 {
			continue
		}
		cm := &corev1.ConfigMap{}
		if err := d.client.Get(ctx, client.ObjectKey{Namespace: sel.Namespace, Name: sel.Status.ConfigMapName}, cm); err != nil {
			return nil, err
		}
		fmt.Fprintf(d.out, "\n      $ kubectl get configmap %s -n %s -o yaml   # data only; spec.target.data renders it\n", cm.Name, cm.Namespace)
		for _, k := range slices.Sorted(maps.Keys(cm.Data)) {
			d.printf("%s: %s", k, cm.Data[k])
		}
	}
	return sels, nil
}

func (d *demo) ensureNamespace(ctx context.Context, name string, labels map[string]string) error {
	ns := testkit.Namespace(name)
	ns.Labels = labels
	if err := d.client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return nil
}
