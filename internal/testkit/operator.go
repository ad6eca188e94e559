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

// EmulatorIAMHosts are the hosts of the IAM emulators that StartIAM serves, which the operator
// must allow (--allowed-iam-hosts) for workload identities of namespaced kinds to reach them.
var EmulatorIAMHosts = []string{"127.0.0.1:*"}

// OperatorOptions returns the options the suites and the demo run the operator with: KMS over
// TLS trusting EmulatorCA besides the system roots, KMS requests retried once after a few
// milliseconds, OperatorBackoff, no health probes, metrics served over plain HTTP at
// metricsAddr ("0" for none), and EmulatorIAMHosts allowed. Adjust the result before
// operator.New.
func OperatorOptions(metricsAddr string) (operator.Options, error) {
	transport, err := EmulatorTransport()
	if err != nil {
		return operator.Options{}, fmt.Errorf("trusting the emulators: %w", err)
	}
	return operator.Options{
		MetricsAddr: metricsAddr,
		ProbeAddr:   "0",
		Backoff:     OperatorBackoff,
		// The emulators' host, and only it: the suites run with the production rule.
		AllowedIAMHosts: EmulatorIAMHosts,
		KMS: kms.Config{
			Transport:      transport,
			RequestTimeout: 10 * time.Second,
			Retry:          kms.RetryPolicy{MaxAttempts: 2, BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond},
		},
	}, nil
}
