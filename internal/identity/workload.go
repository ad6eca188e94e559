package identity

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// The IAM calls of workload identity.
const (
	idTokenPath        = "/v3.0/OS-AUTH/id-token/tokens"
	securityTokensPath = "/v3.0/OS-CREDENTIAL/securitytokens"
	contentType        = "application/json;charset=UTF-8"
)

// ServiceAccountTokenLifetime is the lifetime asked of each service account token: the shortest
// the API server issues. A token is exchanged once, right after it is minted.
const ServiceAccountTokenLifetime = 10 * time.Minute

// SecurityTokenDuration is the lifetime asked of the temporary AK/SK bought with an IAM token;
// IAM may answer with less.
const SecurityTokenDuration = time.Hour

// WorkloadIdentity federates a Kubernetes service account with IAM through an OIDC identity
// provider.
type WorkloadIdentity struct {
	Namespace      string
	ServiceAccount string
	Audiences      []string
	// IdentityProviderID is IAM's ID of the identity provider that trusts the cluster's issuer.
	IdentityProviderID string
	// IAMEndpoint is IAM's base URL, such as https://iam.cn-north-4.myhuaweicloud.com.
	IAMEndpoint string
	// ProjectID is the project the credentials are for: IAM's token is unscoped, but the cache
	// keeps one project's credentials apart from another's.
	ProjectID string
}

// Key identifies the identity: credentials scoped to one project of one identity provider, for
// one service account, are never handed to another.
func (w WorkloadIdentity) Key() string {
	out, _ := json.Marshal([]any{"workload", w.Namespace, w.ServiceAccount, w.Audiences, w.IdentityProviderID, w.IAMEndpoint, w.ProjectID})
	return string(out)
}

func (w WorkloadIdentity) subject() string {
	return "system:serviceaccount:" + w.Namespace + ":" + w.ServiceAccount
}

func (w WorkloadIdentity) fetch(ctx context.Context, b *Broker) (Temporary, error) {
	jwt, err := b.Tokens.ServiceAccountToken(ctx, w.Namespace, w.ServiceAccount, w.Audiences, ServiceAccountTokenLifetime)
	if err != nil {
		return Temporary{}, &Error{Method: methodWorkloadIdentity, Step: "service account token", Message: err.Error()}
	}
	token, err := w.exchange(ctx, b, jwt)
	if err != nil {
		return Temporary{}, err
	}
	return w.securityTokens(ctx, b, token, jwt)
}

// exchange trades the service account token for an unscoped IAM token, as the official SDK
// does: IAM advises against a scoped token for securitytokens, and the conversion rule decides
// which projects the credentials reach.
func (w WorkloadIdentity) exchange(ctx context.Context, b *Broker, jwt string) (string, error) {
	const step = "IAM id-token exchange"
	body, _ := json.Marshal(map[string]any{"auth": map[string]any{
		"id_token": map[string]string{"id": jwt},
	}})
	req, err := http.NewRequest(http.MethodPost, strings.TrimRight(w.IAMEndpoint, "/")+idTokenPath, bytes.NewReader(body))
	if err != nil {
		return "", &Error{Method: methodWorkloadIdentity, Step: step, Message: err.Error()}
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("X-Idp-Id", w.IdentityProviderID)
	header, data, failure := call(ctx, b.HTTP, req, methodWorkloadIdentity, step, []string{jwt}, http.StatusCreated)
	if failure != nil {
		failure.Hint = w.hint(failure.Status)
		return "", failure
	}
	token := header.Get("X-Subject-Token")
	var answer struct {
		Token struct {
			ExpiresAt string `json:"expires_at"`
		} `json:"token"`
	}
	if token == "" || json.Unmarshal(data, &answer) != nil || answer.Token.ExpiresAt == "" {
		return "", &Error{Method: methodWorkloadIdentity, Step: step, Status: http.StatusCreated,
			Message: "the answer lacks the X-Subject-Token header or token.expires_at"}
	}
	return token, nil
}

// securityTokens buys temporary AK/SK with the IAM token, as the official SDK does, so that KMS
// requests are signed rather than carrying a bearer token.
func (w WorkloadIdentity) securityTokens(ctx context.Context, b *Broker, token, jwt string) (Temporary, error) {
	const step = "IAM securitytokens"
	body, _ := json.Marshal(map[string]any{"auth": map[string]any{"identity": map[string]any{
		"methods": []string{"token"},
		"token":   map[string]any{"id": token, "duration_seconds": int(SecurityTokenDuration / time.Second)},
	}}})
	req, err := http.NewRequest(http.MethodPost, strings.TrimRight(w.IAMEndpoint, "/")+securityTokensPath, bytes.NewReader(body))
	if err != nil {
		return Temporary{}, &Error{Method: methodWorkloadIdentity, Step: step, Message: err.Error()}
	}
	req.Header.Set("Content-Type", contentType)
	_, data, failure := call(ctx, b.HTTP, req, methodWorkloadIdentity, step, []string{jwt, token}, http.StatusCreated, http.StatusOK)
	if failure != nil {
		return Temporary{}, failure
	}
	creds, err := decodeCredential(data, "credential")
	if err != nil {
		return Temporary{}, &Error{Method: methodWorkloadIdentity, Step: step, Message: err.Error()}
	}
	return creds, nil
}

// hint says what to check after IAM refused an exchange.
func (w WorkloadIdentity) hint(status int) string {
	switch {
	case status == 0:
		return fmt.Sprintf("check that IAM answers at %s", w.IAMEndpoint)
	case status == http.StatusNotFound:
		return fmt.Sprintf("check that identityProviderId %q names an OIDC identity provider of IAM", w.IdentityProviderID)
	case status == http.StatusBadRequest || status == http.StatusUnauthorized:
		return fmt.Sprintf("check that identity provider %q trusts the cluster's service account issuer and signing keys, and that its client ID is one of the audiences %s",
			w.IdentityProviderID, strings.Join(w.Audiences, ", "))
	case status == http.StatusForbidden:
		return fmt.Sprintf("check that a conversion rule of identity provider %q maps %q to a user group that may list KMS keys in project %q",
			w.IdentityProviderID, w.subject(), w.ProjectID)
	case status >= 500:
		return "IAM is unavailable; the operator retries with backoff"
	}
	return fmt.Sprintf("check identity provider %q, the audiences and its conversion rule for %q", w.IdentityProviderID, w.subject())
}

// GlobalIAMEndpoint is IAM's endpoint for regions without one of their own.
const GlobalIAMEndpoint = "https://iam.myhuaweicloud.com"

// regionalIAM lists the regions with an IAM endpoint of their own, as the official SDK's
// credentials (core/auth/internal/iam_endpoint.go) and its IAM service (services/iam/v3/region,
// which adds eu-west-101) know them.
var regionalIAM = map[string]string{
	"af-south-1": "", "ae-ad-1": "", "ap-southeast-1": "", "ap-southeast-2": "", "ap-southeast-3": "",
	"ap-southeast-4": "", "cn-east-2": "", "cn-east-3": "", "cn-east-4": "", "cn-east-5": "",
	"cn-north-1": "", "cn-north-2": "", "cn-north-4": "", "cn-north-9": "", "cn-north-12": "",
	"cn-south-1": "", "cn-south-2": "", "cn-southwest-2": "", "eu-west-0": "",
	"eu-west-101": "https://iam.eu-west-101.myhuaweicloud.eu", "la-north-2": "", "la-south-2": "",
	"me-east-1": "", "my-kualalumpur-1": "", "na-mexico-1": "", "ru-moscow-1": "", "sa-brazil-1": "",
	"tr-west-1": "",
}

// IAMEndpointForRegion returns the IAM endpoint of a region as the official SDK chooses it: the
// region's own (https://iam.{region}.myhuaweicloud.com, eu-west-101 under myhuaweicloud.eu) when
// it has one, else GlobalIAMEndpoint.
func IAMEndpointForRegion(region string) (string, error) {
	endpoint, err := kms.ServiceEndpoint("iam", region)
	if err != nil {
		return "", err
	}
	own, ok := regionalIAM[region]
	switch {
	case !ok:
		return GlobalIAMEndpoint, nil
	case own != "":
		return own, nil
	}
	return endpoint, nil
}
