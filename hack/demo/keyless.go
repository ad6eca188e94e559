package main

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// keylessSamples is what the demo takes of config/samples/keyless: the service account, the
// KmsProvider that acts as it, and the selector that lists through the provider. The sample's
// ClusterKmsProvider needs an ECS node's metadata service, which the demo does not have.
type keylessSamples struct {
	serviceAccount *corev1.ServiceAccount
	provider       *kmsv1alpha1.KmsProvider
	selector       *kmsv1alpha1.KmsKeySelector
}

func loadKeyless(dir string) (keylessSamples, error) {
	var k keylessSamples
	objs, err := readSamples(dir)
	if err != nil {
		return k, err
	}
	for _, obj := range objs {
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			k.serviceAccount = o
		case *kmsv1alpha1.KmsProvider:
			k.provider = o
		case *kmsv1alpha1.KmsKeySelector:
			k.selector = o
		}
	}
	if k.serviceAccount == nil || k.provider == nil || k.provider.Spec.Auth.WorkloadIdentity == nil || k.selector == nil {
		return k, fmt.Errorf("%s must list a ServiceAccount, a KmsProvider with a workloadIdentity and a KmsKeySelector", dir)
	}
	return k, nil
}

// keylessResult is what step 8 observed.
type keylessResult struct {
	selector  *kmsv1alpha1.KmsKeySelector
	secrets   int
	exchanges int64
	// signed tells whether every KMS request of the step was signed with temporary AK/SK.
	signed bool
}

// goKeyless applies the keyless samples, pointed at the emulator and at an IAM emulator that
// trusts the control plane's service account issuer, and shows the selector synced with no
// Secret anywhere (step 8).
func (d *demo) goKeyless(ctx context.Context, k keylessSamples, projectID string) (keylessResult, error) {
	d.step(8, "Going keyless: workload identity, no Secret (config/samples/keyless/)")
	var res keylessResult
	iam, srv, err := testkit.StartIAM(ctx, d.env.Config, d.kms)
	if err != nil {
		return res, err
	}
	d.cleanups = append(d.cleanups, func() error {
		srv.Close()
		d.printf("IAM emulator stopped")
		return nil
	})
	d.printf("IAM emulator at %s: identity provider %s holds the API server's issuer and JWKS", srv.URL, testkit.IdentityProviderID)
	ns := k.serviceAccount.Namespace
	if err := d.ensureNamespace(ctx, ns, nil); err != nil {
		return res, err
	}
	sa := k.serviceAccount.DeepCopy()
	if err := d.client.Create(ctx, sa); err != nil {
		return res, fmt.Errorf("creating service account %s: %w", sa.Name, err)
	}
	subject := testkit.ServiceAccountSubject(ns, sa.Name)
	iam.Allow(testkit.IdentityProviderID, subject, projectID)
	d.printf("serviceaccount/%s created in %s, opted in to workload identity for audiences %q (%s); IAM's conversion rule lets %s list project %s",
		sa.Name, ns, sa.Annotations[kmsv1alpha1.WorkloadIdentityAudiencesAnnotation], kmsv1alpha1.WorkloadIdentityAudiencesAnnotation, subject, projectID)

	orders := map[string]string{"team": "orders", "env": "prod"}
	if err := d.kms.PutKeys(
		testkit.Key("0d000000-0000-4000-8000-000000000001", "orders-db", kms.StateEnabled, orders),
		testkit.Key("0d000000-0000-4000-8000-000000000002", "orders-events", kms.StateEnabled, orders),
	); err != nil {
		return res, fmt.Errorf("adding the orders team's keys: %w", err)
	}
	seen := len(d.kms.Requests())
	p := k.provider.DeepCopy()
	p.Spec.Endpoint, p.Spec.ProjectID = d.kms.URL, projectID
	w := p.Spec.Auth.WorkloadIdentity
	w.IdentityProviderID, w.IAMEndpoint, w.ServiceAccountRef.Audiences = testkit.IdentityProviderID, srv.URL, []string{testkit.TokenAudience}
	if err := d.client.Create(ctx, p); err != nil {
		return res, fmt.Errorf("creating KmsProvider %s: %w", p.Name, err)
	}
	d.printf("kmsprovider.kms.keysync.dev/%s created: workloadIdentity as %s, audience %s", p.Name, sa.Name, testkit.TokenAudience)
	sel := k.selector.DeepCopy()
	if err := d.client.Create(ctx, sel); err != nil {
		return res, fmt.Errorf("creating selector %s: %w", sel.Name, err)
	}
	d.printf("kmskeyselector.kms.keysync.dev/%s created", sel.Name)
	err = poll(ctx, "selector "+ns+"/"+sel.Name+" to be Ready", func(ctx context.Context) (bool, error) {
		if err := d.client.Get(ctx, client.ObjectKeyFromObject(sel), sel); err != nil {
			return false, err
		}
		c := testkit.ReadyCondition(sel)
		return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == sel.Generation, nil
	})
	if err != nil {
		return res, fmt.Errorf("%w; selector: %s", err, d.readyCondition(ctx, sel))
	}
	fmt.Fprintf(d.out, "\n      $ kubectl get kmsproviders,kks -n %s\n", ns)
	group := "/apis/" + kmsv1alpha1.GroupVersion.String() + "/namespaces/" + ns
	if err := d.printTable(ctx, group+"/kmsproviders"); err != nil {
		return res, err
	}
	fmt.Fprintln(d.out)
	if err := d.printTable(ctx, group+"/kmskeyselectors"); err != nil {
		return res, err
	}
	secrets := &corev1.SecretList{}
	if err := d.client.List(ctx, secrets, client.InNamespace(ns)); err != nil {
		return res, err
	}
	res.selector, res.secrets, res.exchanges = sel, len(secrets.Items), iam.Stats().IDTokenExchanges
	requests := d.kms.Requests()[seen:]
	res.signed = len(requests) > 0 && !slices.ContainsFunc(requests, func(r kmstest.RequestRecord) bool { return r.Auth != kmstest.AuthAKSK })
	fmt.Fprintln(d.out)
	d.printf("Secrets in namespace %s: %d. IAM id-token exchanges: %d, shared by the provider's validation and the selector.", ns, res.secrets, res.exchanges)
	d.printf("%d KMS requests, all signed with temporary AK/SK: %v", len(requests), res.signed)
	return res, nil
}
