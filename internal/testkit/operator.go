package testkit

import (
	"fmt"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/operator"
)

// OperatorBackoff is the first retry delay after a failed sync in OperatorOptions: short, so that
// a retry comes soon.
const OperatorBackoff = 300 * time.Millisecond

// OperatorOptions returns the options the suites and the demo run the operator with: KMS over
// TLS trusting EmulatorCA besides the system roots, KMS requests retried once after a few
// milliseconds, OperatorBackoff, no health probes, and metrics served over plain HTTP at
// metricsAddr ("0" for none). Adjust the result before operator.New.
func OperatorOptions(metricsAddr string) (operator.Options, error) {
	transport, err := EmulatorTransport()
	if err != nil {
		return operator.Options{}, fmt.Errorf("trusting the emulators: %w", err)
	}
	return operator.Options{
		MetricsAddr: metricsAddr,
		ProbeAddr:   "0",
		Backoff:     OperatorBackoff,
		KMS: kms.Config{
			Transport:      transport,
			RequestTimeout: 10 * time.Second,
			Retry:          kms.RetryPolicy{MaxAttempts: 2, BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond},
		},
	}, nil
}
