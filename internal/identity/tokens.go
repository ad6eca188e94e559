package identity

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

// ServiceAccountTokens mints service account tokens through the TokenRequest API, for service
// accounts that opted in, and proves that the API server itself refuses each one.
type ServiceAccountTokens struct {
	// Client creates TokenRequests and TokenReviews.
	Client client.Client
	// Reader reads service accounts; it should not cache, so that the operator needs only get.
	Reader client.Reader
}

// ServiceAccountToken mints a token for the service account with exactly these audiences and
// lifetime. It refuses a service account whose WorkloadIdentityAudiencesAnnotation does not list
// every audience, and a token that the API server accepts (a TokenReview naming no audience): such
// a token would act on the cluster wherever it is sent.
func (t ServiceAccountTokens) ServiceAccountToken(ctx context.Context, namespace, name string, audiences []string, lifetime time.Duration) (string, error) {
	// client-go dumps bodies at high verbosity; a token must never reach a log.
	quiet := logr.NewContext(ctx, logr.Discard())
	if err := t.optedIn(quiet, namespace, name, audiences); err != nil {
		return "", err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	seconds := int64(lifetime / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         audiences,
		ExpirationSeconds: &seconds,
	}}
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
	review := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: req.Status.Token}}
	if err := t.Client.Create(quiet, review); err != nil {
		if apierrors.IsForbidden(err) {
			return "", fmt.Errorf("the operator may not check that the API server refuses the token: it needs create on tokenreviews")
		}
		return "", fmt.Errorf("checking that the API server refuses the token of service account %q in namespace %q: %w", name, namespace, err)
	}
	if review.Status.Authenticated {
		return "", fmt.Errorf("the Kubernetes API server accepts a token of service account %q in namespace %q for audiences %s; such a token never leaves the cluster: use the client ID of the IAM identity provider, such as kms-key-sync",
			name, namespace, strings.Join(audiences, ", "))
	}
	return req.Status.Token, nil
}

// optedIn tells, as an error, why the service account may not be used for these audiences.
func (t ServiceAccountTokens) optedIn(ctx context.Context, namespace, name string, audiences []string) error {
	sa := &metav1.PartialObjectMetadata{}
	sa.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("ServiceAccount"))
	if err := t.Reader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, sa); err != nil {
		switch {
		case apierrors.IsNotFound(err):
			return fmt.Errorf("service account %q does not exist in namespace %q", name, namespace)
		case apierrors.IsForbidden(err):
			return fmt.Errorf("the operator may not read service account %q in namespace %q: it needs get on serviceaccounts", name, namespace)
		}
		return fmt.Errorf("reading service account %q in namespace %q: %w", name, namespace, err)
	}
	value, ok := sa.Annotations[kmsv1alpha1.WorkloadIdentityAudiencesAnnotation]
	if !ok {
		return fmt.Errorf("service account %q in namespace %q has not opted in to workload identity: annotate it with %s listing the audiences it allows",
			name, namespace, kmsv1alpha1.WorkloadIdentityAudiencesAnnotation)
	}
	allowed := AudienceList(value)
	for _, a := range audiences {
		if !slices.Contains(allowed, a) {
			return fmt.Errorf("service account %q in namespace %q does not allow audience %q: its annotation %s allows only %q",
				name, namespace, a, kmsv1alpha1.WorkloadIdentityAudiencesAnnotation, value)
		}
	}
	return nil
}

// AudienceList reads the value of WorkloadIdentityAudiencesAnnotation: comma-separated
// audiences, white space around each ignored.
func AudienceList(value string) []string {
	var out []string
	for _, a := range strings.Split(value, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}
