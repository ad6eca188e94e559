package identity

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
)

// The ECS metadata service.
const (
	DefaultMetadataEndpoint = "http://169.254.169.254"
	metadataTokenPath       = "/meta-data/latest/api/token"
	securityKeyPath         = "/openstack/latest/securitykey"
	// metadataTokenTTL is the lifetime asked of a metadata session token, as the SDK asks.
	metadataTokenTTL = 6 * 60 * 60
	// noAgencyMessage is what the metadata service answers when the node has no agency.
	noAgencyMessage = "Please configure Cloud Service Agency first"
)

// The environment that CCE Pod Identity sets in a pod of an associated service account.
const (
	PodIdentityURIEnv       = "HC_CONTAINER_CREDENTIALS_FULL_URI"
	PodIdentityTokenFileEnv = "HC_CONTAINER_AUTHORIZATION_TOKEN_FILE"
)

// NodeAgency is the IAM agency of the node the operator runs on.
type NodeAgency struct{}

// Key identifies the node's identity.
func (NodeAgency) Key() string { return `["node-agency"]` }

func (NodeAgency) fetch(ctx context.Context, b *Broker) (Temporary, error) {
	session, failure := metadataSession(ctx, b)
	if failure != nil {
		return Temporary{}, failure
	}
	data, failure := securityKey(ctx, b, session)
	if failure != nil && failure.Status == http.StatusUnauthorized && !strings.Contains(failure.Message, noAgencyMessage) {
		// The session token was refused, not the node: ask for a new one and try once more,
		// as the official SDK does.
		if session, failure = metadataSession(ctx, b); failure != nil {
			return Temporary{}, failure
		}
		data, failure = securityKey(ctx, b, session)
	}
	if failure != nil {
		if failure.Status == http.StatusUnauthorized && strings.Contains(failure.Message, noAgencyMessage) {
			failure.Message = "the node has no IAM agency"
			failure.Hint = "give the node pool an IAM agency that may list KMS keys, or use another method in spec.auth"
		}
		return Temporary{}, failure
	}
	creds, err := decodeCredential(data, "credential")
	if err != nil {
		return Temporary{}, &Error{Method: methodNodeAgency, Step: "metadata securitykey", Message: err.Error()}
	}
	return creds, nil
}

// metadataSession asks the metadata service for a session token. It returns "" when the
// service answers 404 or 405, as one without session tokens does: the official SDK then goes on
// without one.
func metadataSession(ctx context.Context, b *Broker) (string, *Error) {
	const step = "metadata token"
	req, err := http.NewRequest(http.MethodPut, strings.TrimRight(b.MetadataEndpoint, "/")+metadataTokenPath, http.NoBody)
	if err != nil {
		return "", &Error{Method: methodNodeAgency, Step: step, Message: err.Error()}
	}
	req.Header.Set("X-Metadata-Token-Ttl-Seconds", strconv.Itoa(metadataTokenTTL))
	_, token, failure := call(ctx, b.Metadata, req, methodNodeAgency, step, nil, http.StatusOK)
	switch {
	case failure == nil:
		return strings.TrimSpace(string(token)), nil
	case failure.Status == http.StatusNotFound || failure.Status == http.StatusMethodNotAllowed:
		return "", nil
	}
	failure.Hint = "check that the operator runs on an ECS node and that --metadata-endpoint is right"
	return "", failure
}

// securityKey reads the node agency's credentials, with the session token when there is one.
func securityKey(ctx context.Context, b *Broker, session string) ([]byte, *Error) {
	const step = "metadata securitykey"
	req, err := http.NewRequest(http.MethodGet, strings.TrimRight(b.MetadataEndpoint, "/")+securityKeyPath, http.NoBody)
	if err != nil {
		return nil, &Error{Method: methodNodeAgency, Step: step, Message: err.Error()}
	}
	var secrets []string
	if session != "" {
		req.Header.Set("X-Metadata-Token", session)
		secrets = []string{session}
	}
	_, data, failure := call(ctx, b.Metadata, req, methodNodeAgency, step, secrets, http.StatusOK)
	return data, failure
}

// PodIdentity is the IAM agency that CCE Pod Identity binds to the operator's service account.
type PodIdentity struct{}

// Key identifies the operator's pod identity.
func (PodIdentity) Key() string { return `["pod-identity"]` }

func (PodIdentity) fetch(ctx context.Context, b *Broker) (Temporary, error) {
	const step = "pod identity endpoint"
	if b.PodIdentityURI == "" || b.PodIdentityTokenFile == "" {
		return Temporary{}, &Error{Method: methodPodIdentity, Step: step,
			Message: "the operator's pod has no CCE pod identity: " + PodIdentityURIEnv + " or " + PodIdentityTokenFileEnv + " is not set",
			Hint:    "create a pod identity association for the operator's service account and restart the operator"}
	}
	if u, err := url.Parse(b.PodIdentityURI); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return Temporary{}, &Error{Method: methodPodIdentity, Step: step,
			Message: PodIdentityURIEnv + " is not an absolute http or https URL"}
	} else if u.Scheme == "http" && !b.AllowInsecureEndpoints {
		return Temporary{}, &Error{Method: methodPodIdentity, Step: step,
			Message: fmt.Sprintf("%s %q is plain http and would send the pod's token in clear text", PodIdentityURIEnv, u.Redacted()),
			Hint:    "use an https endpoint, or run the operator with --allow-insecure-endpoints"}
	}
	raw, err := os.ReadFile(b.PodIdentityTokenFile)
	if err != nil {
		return Temporary{}, &Error{Method: methodPodIdentity, Step: step, Message: "reading " + PodIdentityTokenFileEnv + ": " + err.Error()}
	}
	token := strings.TrimSpace(string(raw))
	req, err := http.NewRequest(http.MethodPost, b.PodIdentityURI, bytes.NewReader([]byte("{}")))
	if err != nil {
		return Temporary{}, &Error{Method: methodPodIdentity, Step: step, Message: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("Authorization", token)
	_, data, failure := call(ctx, b.HTTP, req, methodPodIdentity, step, []string{token}, http.StatusOK)
	if failure != nil {
		failure.Hint = "check the pod identity association of the operator's service account"
		return Temporary{}, failure
	}
	creds, err := decodeCredential(data, "credentials")
	if err != nil {
		return Temporary{}, &Error{Method: methodPodIdentity, Step: step, Message: err.Error()}
	}
	return creds, nil
}
