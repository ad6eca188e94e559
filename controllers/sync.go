package controllers

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/keysource"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// sync lists the keys and, only once the listing is complete, writes the ConfigMap when its
// content changed, then the success into the status. What the attempt handled (the generation,
// the force-sync value) is recorded only with its outcome.
func (r *KmsKeySelectorReconciler) sync(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, target *metav1.PartialObjectMetadata, now time.Time) error {
	req, err := r.listRequest(ctx, sel)
	if err != nil {
		return err
	}
	keys, err := r.list(ctx, req)
	if err != nil {
		return err
	}
	rendered, err := renderContent(keys)
	if err != nil {
		return err
	}
	previous, err := r.writeTarget(ctx, sel, target, rendered)
	if err != nil {
		return err
	}
	r.recordChanges(sel, previous, rendered)
	setSynced(sel, keys, now, nextRefresh(r.Options.Now(), refreshInterval(sel), req.Phase(), !requested(sel)))
	recordSynced(sel)
	return nil
}

// listRequest builds the KMS request from the spec and the credentials Secret.
func (r *KmsKeySelectorReconciler) listRequest(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector) (keysource.Request, error) {
	filter := filterFromSpec(sel.Spec)
	if err := filter.Validate(); err != nil {
		return keysource.Request{}, failed(kmsv1alpha1.ReasonInvalidSpec, fmt.Errorf("spec: %w", err))
	}
	endpoint, err := endpointFor(sel.Spec.Provider)
	if err != nil {
		return keysource.Request{}, failed(kmsv1alpha1.ReasonInvalidSpec, err)
	}
	if endpoint.Scheme == "http" && !r.Options.AllowInsecureEndpoints {
		return keysource.Request{}, failedf(kmsv1alpha1.ReasonInsecureEndpoint,
			"spec.provider.endpoint %q is plain http and would send credentials in clear text; use https, or run the operator with --allow-insecure-endpoints", endpoint.String())
	}
	creds, err := r.credentials(ctx, sel)
	if err != nil {
		return keysource.Request{}, err
	}
	req := keysource.Request{
		Endpoint:    endpoint.String(),
		ProjectID:   sel.Spec.Provider.ProjectID,
		Credentials: creds,
		PageSize:    pageSize(sel.Spec),
		Filter:      filter,
	}
	req.NotBefore, req.Fresh = r.listingSince(sel, r.Options.Now())
	if sel.Status.ConsecutiveFailures > 0 {
		// While failing, the selector's backoff is the retry policy: one call per attempt, so a
		// persistent fault costs no more than one call per backoff step.
		req.MaxAttempts = 1
	}
	return req, nil
}

// credentials reads the Secret that spec.provider.credentialsSecretRef names.
func (r *KmsKeySelectorReconciler) credentials(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector) (kms.Credentials, error) {
	ref := sel.Spec.Provider.CredentialsSecretRef.Name
	secret := &corev1.Secret{}
	// client-go dumps response bodies at high verbosity; the Secret's must never reach a log.
	quiet := logr.NewContext(ctx, logr.Discard())
	if err := r.APIReader.Get(quiet, types.NamespacedName{Namespace: sel.Namespace, Name: ref}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return kms.Credentials{}, failedf(kmsv1alpha1.ReasonCredentialsNotFound,
				"secret %q named by spec.provider.credentialsSecretRef does not exist in namespace %q", ref, sel.Namespace)
		}
		return kms.Credentials{}, fmt.Errorf("getting secret %q: %w", ref, err)
	}
	creds, err := credentialsFromSecret(secret)
	if err != nil {
		return kms.Credentials{}, failed(kmsv1alpha1.ReasonCredentialsInvalid, fmt.Errorf("secret %q: %w", ref, err))
	}
	return creds, nil
}

// list runs the listing within the sync timeout.
func (r *KmsKeySelectorReconciler) list(ctx context.Context, req keysource.Request) ([]kms.Key, error) {
	listCtx, cancel := context.WithTimeout(ctx, r.Options.SyncTimeout)
	defer cancel()
	keys, err := r.Keys.ListKeys(listCtx, req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, kmsFailure(err)
	}
	return keys, nil
}

func endpointFor(p kmsv1alpha1.ProviderSpec) (*url.URL, error) {
	raw := p.Endpoint
	if raw == "" {
		var err error
		if raw, err = kms.EndpointForRegion(p.Region); err != nil {
			return nil, fmt.Errorf("spec.provider.region: %w", err)
		}
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("spec.provider.endpoint %q is not an absolute http or https URL", raw)
	}
	return u, nil
}
