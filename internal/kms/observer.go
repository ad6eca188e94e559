package kms

import (
	"maps"
	"net/http"
	"sync"
	"time"
)

// The outcomes of one HTTP request reported to an Observer.
const (
	OutcomeSuccess      = "success"
	OutcomeThrottled    = "throttled"
	OutcomeClientError  = "client_error"
	OutcomeServerError  = "server_error"
	OutcomeNetworkError = "network_error"
	OutcomeDecodeError  = "decode_error"
)

// Observer is told about every HTTP request the client makes, retries included. operation is
// ActionFilter or ActionCount; outcome is one of the Outcome constants. Requests abandoned because
// the caller's context ended are not reported. Implementations must be safe for concurrent use.
type Observer interface {
	ObserveRequest(operation, outcome string, duration time.Duration)
}

// Counters is a ready Observer that counts requests by operation and outcome.
// The zero value is ready to use; it is safe for concurrent use.
type Counters struct {
	mu     sync.Mutex
	counts map[string]int64
}

// ObserveRequest counts one request.
func (c *Counters) ObserveRequest(operation, outcome string, _ time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts == nil {
		c.counts = map[string]int64{}
	}
	c.counts[counterKey(operation, outcome)]++
}

// Count returns the number of requests seen for operation and outcome.
func (c *Counters) Count(operation, outcome string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[counterKey(operation, outcome)]
}

// Total returns the number of requests seen for operation, whatever their outcome.
func (c *Counters) Total(operation string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, outcome := range []string{OutcomeSuccess, OutcomeThrottled, OutcomeClientError,
		OutcomeServerError, OutcomeNetworkError, OutcomeDecodeError} {
		n += c.counts[counterKey(operation, outcome)]
	}
	return n
}

// Snapshot returns a copy of every count, keyed "operation/outcome".
func (c *Counters) Snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.counts)
}

func counterKey(operation, outcome string) string { return operation + "/" + outcome }

type nopObserver struct{}

func (nopObserver) ObserveRequest(string, string, time.Duration) {}

// outcomeOf classifies a finished request for the Observer: status is 0 when no HTTP answer
// arrived, err is the error of the request or of decoding its 2xx body.
func outcomeOf(status int, err error) string {
	switch {
	case status == 0:
		return OutcomeNetworkError
	case status == http.StatusTooManyRequests:
		return OutcomeThrottled
	case status >= 500:
		return OutcomeServerError
	case status < 200 || status > 299:
		return OutcomeClientError
	case err != nil:
		return OutcomeDecodeError
	default:
		return OutcomeSuccess
	}
}
