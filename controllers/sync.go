package controllers

import (
	"context"
	"fmt"
	"net/url"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/keysource"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/render"
)

// sync lists the keys for trigger and, only once the listing is complete, writes the ConfigMap
// when its content changed, then the success into the status. What the attempt handled (the
// generation, the force-sync value) is recorded only with its outcome.
func (r *KmsKeySelectorReconciler) sync(ctx context.Context, s situation, trigger keysource.Trigger, p provider, target *metav1.PartialObjectMetadata) error {
	sel, now := s.sel, s.now
	// Expressions are compiled before KMS is called, so that a broken one costs no call.
	exprs, err := render.Compile(sel.Spec.Target)
	if err != nil {
		return renderFailure(err, time.Time{})
	}
	req, err := r.listRequest(ctx, s, p)
	if err != nil {
		return err
	}
	req.Trigger = trigger
	keys, err := r.list(ctx, req)
	if err != nil {
		return err
	}
	next := nextRefresh(r.Options.Now(), refreshInterval(sel), req.Phase(), !requested(sel))
	rendered, err := render.Render(ctx, render.Keys(keys), exprs)
	if err != nil {
		return renderFailure(err, next)
	}
	previous, err := r.writeTarget(ctx, sel, target, rendered)
	if err != nil {
		return err
	}
	digest := rendered.Digest()
	// The default entries hold every key's details: when they are kept and the content is what
	// the last sync wrote, no key changed, and the diff, the refresh's largest cost, is skipped.
	unchanged := digest == sel.Status.ContentDigest && sel.Spec.Target.MergePolicy != kmsv1alpha1.MergePolicyReplace
	if !unchanged {
		var defaults *render.Content
		if exprs == nil {
			defaults = &rendered
		}
		r.recordChanges(sel, previouslyListed(sel, previous), listedKeys(keys, defaults))
	}
	setSynced(sel, keys, len(rendered.Data)+len(rendered.BinaryData), digest, now)
	r.Refreshes.Listed(sel, now, next)
	recordSynced(sel, now)
	return nil
}

// listRequest builds the KMS request from the spec, the provider and its credentials.
func (r *KmsKeySelectorReconciler) listRequest(ctx context.Context, s situation, p provider) (keysource.Request, error) {
	req, err := r.question(s.sel, p)
	if err != nil {
		return keysource.Request{}, err
	}
	if req.Credentials, err = r.credentials(ctx, p); err != nil {
		return keysource.Request{}, err
	}
	req.NotBefore, req.Fresh = r.listingSince(s)
	if s.sel.Status.ConsecutiveFailures > 0 {
		// While failing, the selector's backoff is the retry policy: one call per attempt, so a
		// persistent fault costs no more than one call per backoff step.
		req.MaxAttempts = 1
	}
	return req, nil
}

// question is the request without credentials: where to list, and what.
func (r *KmsKeySelectorReconciler) question(sel *kmsv1alpha1.KmsKeySelector, p provider) (keysource.Request, error) {
	filter := filterFromSpec(sel.Spec)
	if len(filter.Tags) == 0 && len(filter.Matches) == 0 && !sel.Spec.AllKeys {
		// The schema refuses this; a selector stored before it did must not list every key.
		return keysource.Request{}, newFailuref(kmsv1alpha1.ReasonInvalidSpec,
			"spec sets no tags and no matches; choose keys with spec.tags or spec.matches, or set spec.allKeys: true to list every key of the project")
	}
	if err := filter.Validate(); err != nil {
		return keysource.Request{}, newFailure(kmsv1alpha1.ReasonInvalidSpec, fmt.Errorf("spec: %w", err))
	}
	endpoint, err := r.endpoint(p)
	if err != nil {
		return keysource.Request{}, err
	}
	return keysource.Request{
		Endpoint:  endpoint,
		ProjectID: p.location.ProjectID,
		PageSize:  pageSize(sel.Spec),
		Filter:    filter,
	}, nil
}

// endpoint is the provider's KMS endpoint, if the operator may send credentials to it.
func (r *KmsKeySelectorReconciler) endpoint(p provider) (string, error) {
	return endpointOf(p, r.Options.AllowInsecureEndpoints)
}

func endpointOf(p provider, allowInsecure bool) (string, error) {
	raw := p.location.Endpoint
	if raw == "" {
		var err error
		if raw, err = kms.EndpointForRegion(p.location.Region); err != nil {
			return "", newFailuref(kmsv1alpha1.ReasonInvalidSpec, "%s.region: %v", p.specPath, err)
		}
	}
	return allowedEndpoint(raw, p.specPath+".endpoint", allowInsecure)
}

// allowedEndpoint checks the URL, named by field, of a service the operator sends credentials
// to: KMS or IAM.
func allowedEndpoint(raw, field string, allowInsecure bool) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", newFailuref(kmsv1alpha1.ReasonInvalidSpec, "%s %q is not an absolute http or https URL", field, raw)
	}
	if u.Scheme == "http" && !allowInsecure {
		return "", newFailuref(kmsv1alpha1.ReasonInsecureEndpoint,
			"%s %q is plain http and would send credentials in clear text; use https, or run the operator with --allow-insecure-endpoints", field, u.String())
	}
	return u.String(), nil
}

// credentials reads the provider's Secret, or obtains its keyless identity's credentials.
func (r *KmsKeySelectorReconciler) credentials(ctx context.Context, p provider) (kms.Credentials, error) {
	return credentialsOf(ctx, r.APIReader, r.Identities, p, r.Options.AllowInsecureEndpoints)
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
