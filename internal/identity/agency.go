package identity

import (
	"bytes"
	"context"
	"net/http"
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
	base := strings.TrimRight(b.MetadataEndpoint, "/")
	req, err := http.NewRequest(http.MethodPut, base+metadataTokenPath, http.NoBody)
	if err != nil {
		return Temporary{}, &Error{Method: methodNodeAgency, Step: "metadata token", Message: err.Error()}
	}
	req.Header.Set("X-Metadata-Token-Ttl-Seconds", strconv.Itoa(metadataTokenTTL))
	_, token, failure := call(ctx, b.Metadata, req, methodNodeAgency, "metadata token", nil, http.StatusOK)
	if failure != nil {
		failure.Hint = "check that the operator runs on an ECS node and that --metadata-endpoint is right"
		return Temporary{}, failure
	}
	session := strings.TrimSpace(string(token))
	req, err = http.NewRequest(http.MethodGet, base+securityKeyPath, http.NoBody)
	if err != nil {
		return Temporary{}, &Error{Method: methodNodeAgency, Step: "metadata securitykey", Message: err.Error()}
	}
	req.Header.Set("X-Metadata-Token", session)
	_, data, failure := call(ctx, b.Metadata, req, methodNodeAgency, "metadata securitykey", []string{session}, http.StatusOK)
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
