package controllers

import (
	"errors"
	"fmt"
	"time"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/render"
)

// failure is a sync failure that the status reports: Ready turns False with reason and the
// error as its message, and the selector is retried with backoff. Any other error from a sync
// is transient (the API server was unavailable, say): it goes back to the workqueue, and the
// status keeps saying what it said.
type failure struct {
	reason string
	err    error
	// retryAt, when set, is the next attempt instead of a backoff step: the failure is not the
	// KMS API's, so the selector keeps its refresh schedule.
	retryAt time.Time
}

func (f *failure) Error() string { return f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

func newFailure(reason string, err error) error { return &failure{reason: reason, err: err} }

func newFailuref(reason, format string, args ...any) error {
	return &failure{reason: reason, err: fmt.Errorf(format, args...)}
}

// asFailure returns the failure err carries, or nil for a transient error.
func asFailure(err error) *failure {
	var f *failure
	if errors.As(err, &f) {
		return f
	}
	return nil
}

// permanent tells whether retrying cannot help until the spec, or the operator's flags, change.
func permanent(reason string) bool {
	return reason == kmsv1alpha1.ReasonInvalidSpec || reason == kmsv1alpha1.ReasonInsecureEndpoint
}

// kmsFailure classifies an error of a KMS call, whose message names the call (ListKmsByTags).
func kmsFailure(err error) error {
	var invalid *kms.ValidationError
	reason := kmsv1alpha1.ReasonKMSRequestFailed
	switch {
	case kms.IsAuthFailure(err):
		reason = kmsv1alpha1.ReasonCredentialsInvalid
	case kms.IsThrottled(err):
		reason = kmsv1alpha1.ReasonKMSThrottled
	case errors.As(err, &invalid):
		reason = kmsv1alpha1.ReasonInvalidSpec
	}
	return newFailure(reason, err)
}

// renderFailure classifies an error of rendering the content. An expression that fails on a
// good listing is no fault of KMS: the selector keeps its refresh schedule and retries at next,
// without backoff.
func renderFailure(err error, next time.Time) error {
	var (
		spec       *render.SpecError
		expression *render.ExpressionError
		tooLarge   *render.TooLargeError
		keyID      *render.KeyIDError
	)
	switch {
	case errors.As(err, &spec):
		return newFailure(kmsv1alpha1.ReasonInvalidSpec, err)
	case errors.As(err, &expression):
		return &failure{reason: kmsv1alpha1.ReasonExpressionFailed, err: err, retryAt: next}
	case errors.As(err, &tooLarge):
		return newFailure(kmsv1alpha1.ReasonTargetTooLarge, err)
	case errors.As(err, &keyID):
		return newFailure(kmsv1alpha1.ReasonKMSRequestFailed, err)
	}
	return err
}

// retryAfter is how long KMS asked callers to wait, or zero.
func retryAfter(err error) time.Duration {
	var apiErr *kms.APIError
	if errors.As(err, &apiErr) {
		return apiErr.RetryAfter
	}
	return 0
}
