package identity

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ServiceAccountTokens mints service account tokens through the TokenRequest API.
type ServiceAccountTokens struct {
	Client client.Client
}

// ServiceAccountToken mints a token for the service account with exactly these audiences and
// lifetime.
func (t ServiceAccountTokens) ServiceAccountToken(ctx context.Context, namespace, name string, audiences []string, lifetime time.Duration) (string, error) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	seconds := int64(lifetime / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         audiences,
		ExpirationSeconds: &seconds,
	}}
	// client-go dumps response bodies at high verbosity; a token must never reach a log.
	quiet := logr.NewContext(ctx, logr.Discard())
	if err := t.Client.SubResource("token").Create(quiet, sa, req); err != nil {
		switch {
		case apierrors.IsNotFound(err):
			return "", fmt.Errorf("service account %q does not exist in namespace %q", name, namespace)
		case apierrors.IsForbidden(err):
			return "", fmt.Errorf("the operator may not request tokens for service account %q in namespace %q: it needs create on serviceaccounts/token", name, namespace)
		}
		return "", fmt.Errorf("requesting a token for service account %q in namespace %q: %w", name, namespace, err)
	}
	if req.Status.Token == "" {
		return "", fmt.Errorf("the API server returned no token for service account %q in namespace %q", name, namespace)
	}
	return req.Status.Token, nil
}
