package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/identity"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// Identities hands out the temporary credentials of keyless identities, cached per identity.
type Identities interface {
	Credentials(ctx context.Context, src identity.Source) (kms.Credentials, error)
}

var _ Identities = (*identity.Broker)(nil)

// credentialsOf reads a provider's Secret, or obtains the credentials of its keyless identity.
func credentialsOf(ctx context.Context, reader client.Reader, identities Identities, p provider, allowInsecure bool) (kms.Credentials, error) {
	if p.secret != nil {
		return readCredentials(ctx, reader, p)
	}
	src, err := identitySource(p, allowInsecure)
	if err != nil {
		return kms.Credentials{}, err
	}
	creds, err := identities.Credentials(ctx, src)
	if err != nil {
		if ctx.Err() != nil {
			return kms.Credentials{}, ctx.Err()
		}
		return kms.Credentials{}, newFailure(kmsv1alpha1.ReasonIdentityExchangeFailed, fmt.Errorf("%s: %w", p.authPath, err))
	}
	return creds, nil
}

// identitySource is the keyless identity of a provider, with its IAM endpoint resolved.
func identitySource(p provider, allowInsecure bool) (identity.Source, error) {
	if p.workload == nil {
		return p.keyless, nil
	}
	w := p.workload
	endpoint := w.iamEndpoint
	if endpoint == "" {
		var err error
		if endpoint, err = identity.IAMEndpointForRegion(p.location.Region); err != nil {
			return nil, newFailuref(kmsv1alpha1.ReasonInvalidSpec, "%s.iamEndpoint is not set and %s.region gives no IAM endpoint: %v", p.authPath, p.specPath, err)
		}
	}
	endpoint, err := allowedEndpoint(endpoint, p.authPath+".iamEndpoint", allowInsecure)
	if err != nil {
		return nil, err
	}
	if u, _ := url.Parse(endpoint); w.allowedHosts != nil && !identity.HostAllowed(w.allowedHosts, u) {
		return nil, newFailuref(kmsv1alpha1.ReasonInvalidSpec,
			"%s.iamEndpoint %q is not an IAM host the operator sends service account tokens to (--allowed-iam-hosts: %s)",
			p.authPath, endpoint, strings.Join(w.allowedHosts, ","))
	}
	return identity.WorkloadIdentity{
		Namespace:          w.serviceAccount.Namespace,
		ServiceAccount:     w.serviceAccount.Name,
		Audiences:          w.audiences,
		IdentityProviderID: w.identityProviderID,
		IAMEndpoint:        endpoint,
		ProjectID:          p.location.ProjectID,
	}, nil
}

// readCredentials reads the provider's Secret.
func readCredentials(ctx context.Context, reader client.Reader, p provider) (kms.Credentials, error) {
	secret := &corev1.Secret{}
	// client-go dumps response bodies at high verbosity; the Secret's must never reach a log.
	quiet := logr.NewContext(ctx, logr.Discard())
	if err := reader.Get(quiet, *p.secret, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return kms.Credentials{}, newFailuref(kmsv1alpha1.ReasonCredentialsNotFound,
				"secret %q named by %s does not exist in namespace %q", p.secret.Name, p.authPath, p.secret.Namespace)
		}
		return kms.Credentials{}, fmt.Errorf("getting secret %q: %w", p.secret.Name, err)
	}
	creds, err := credentialsFromSecret(secret)
	if err != nil {
		return kms.Credentials{}, newFailure(kmsv1alpha1.ReasonCredentialsInvalid, fmt.Errorf("secret %q: %w", p.secret.Name, err))
	}
	return creds, nil
}

// credentialsFromSecret reads either an AK/SK pair (with an optional security token) or a token.
// Surrounding white space, such as the newline a file leaves, is trimmed. Errors name the Secret's
// key at fault and never include a value.
func credentialsFromSecret(s *corev1.Secret) (kms.Credentials, error) {
	values := map[string]string{}
	for _, k := range []string{kmsv1alpha1.SecretAccessKey, kmsv1alpha1.SecretSecretKey, kmsv1alpha1.SecretSecurityToken, kmsv1alpha1.SecretToken} {
		raw, ok := s.Data[k]
		if !ok {
			continue
		}
		if !utf8.Valid(raw) {
			return kms.Credentials{}, fmt.Errorf("secret key %q is not valid UTF-8", k)
		}
		v := strings.TrimSpace(string(raw))
		if v == "" {
			return kms.Credentials{}, fmt.Errorf("secret key %q is empty", k)
		}
		values[k] = v
	}
	c := kms.Credentials{
		AccessKey:     values[kmsv1alpha1.SecretAccessKey],
		SecretKey:     values[kmsv1alpha1.SecretSecretKey],
		SecurityToken: values[kmsv1alpha1.SecretSecurityToken],
		Token:         values[kmsv1alpha1.SecretToken],
	}
	hasAKSK := c.AccessKey != "" || c.SecretKey != "" || c.SecurityToken != ""
	switch {
	case c.Token != "" && hasAKSK:
		return kms.Credentials{}, errors.New("secret holds both token and accessKey/secretKey; keep one kind")
	case c.Token != "":
		return c, nil
	case c.AccessKey == "" && c.SecretKey == "" && c.SecurityToken == "":
		return kms.Credentials{}, fmt.Errorf("secret holds neither %q nor %q and %q", kmsv1alpha1.SecretToken, kmsv1alpha1.SecretAccessKey, kmsv1alpha1.SecretSecretKey)
	case c.AccessKey == "":
		return kms.Credentials{}, fmt.Errorf("secret key %q is missing", kmsv1alpha1.SecretAccessKey)
	case c.SecretKey == "":
		return kms.Credentials{}, fmt.Errorf("secret key %q is missing", kmsv1alpha1.SecretSecretKey)
	}
	return c, nil
}
