package kms

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// maxExcerpt is the most bytes of an unparseable error body an APIError carries.
const maxExcerpt = 200

// ErrInconsistentListing is wrapped by ListKeys when the listing kept changing underneath it
// (total_count moved between pages, a page came back empty before total_count was reached, or the
// distinct keys did not add up to total_count) on every allowed pass.
var ErrInconsistentListing = errors.New("listing inconsistent")

// APIError is a non-2xx answer of the KMS API or of a gateway in front of it.
type APIError struct {
	// Operation is ActionFilter or ActionCount.
	Operation  string
	StatusCode int
	// Code and Message come from the KMS error body {"error":{"error_code","error_msg"}}; they are
	// empty when the body had another shape.
	Code    string
	Message string
	// Excerpt is a sanitised beginning (at most 200 bytes) of a body that was not a KMS error.
	Excerpt string
	// RequestID is the X-Request-Id response header, when present.
	RequestID string
	// RetryAfter is the server's Retry-After, zero when absent.
	RetryAfter time.Duration
}

// Error describes the answer; it never contains credentials.
func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: http %d", operationName(e.Operation), e.StatusCode)
	if e.Code != "" || e.Message != "" {
		fmt.Fprintf(&b, ": %s: %s", e.Code, e.Message)
	} else if e.Excerpt != "" {
		fmt.Fprintf(&b, ": unexpected body %q", e.Excerpt)
	}
	if e.RequestID != "" {
		fmt.Fprintf(&b, " (request id %s)", e.RequestID)
	}
	return b.String()
}

// operationName names a request as the KMS API documents it, for errors: ListKmsByTags, with the
// action when it is not the listing itself.
func operationName(action string) string {
	if action == ActionFilter {
		return "ListKmsByTags"
	}
	return "ListKmsByTags (action " + action + ")"
}

// Retryable reports whether the request may succeed when sent again: 429 and 5xx.
func (e *APIError) Retryable() bool {
	return e.StatusCode == http.StatusTooManyRequests || e.StatusCode >= 500
}

// TransportError is a request that got no HTTP answer: connection refused or reset, timeout,
// TLS failure.
type TransportError struct {
	Operation string
	Err       error
}

func (e *TransportError) Error() string {
	return fmt.Sprintf("%s: request failed: %v", operationName(e.Operation), e.Err)
}

// Unwrap returns the underlying error.
func (e *TransportError) Unwrap() error { return e.Err }

// Retryable is true except for failures that repeat deterministically: certificate verification
// and unknown hosts.
func (e *TransportError) Retryable() bool {
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		invalid          x509.CertificateInvalidError
		verification     *tls.CertificateVerificationError
		dns              *net.DNSError
	)
	switch {
	case errors.As(e.Err, &unknownAuthority), errors.As(e.Err, &hostname),
		errors.As(e.Err, &invalid), errors.As(e.Err, &verification):
		return false
	case errors.As(e.Err, &dns):
		return !dns.IsNotFound
	}
	return true
}

// Timeout reports whether the request timed out.
func (e *TransportError) Timeout() bool {
	var t interface{ Timeout() bool }
	return errors.As(e.Err, &t) && t.Timeout()
}

// IsRetryable reports whether err, or an error it wraps, says that sending the request again may
// succeed: 429, 5xx, timeouts, dropped connections, a truncated body.
func IsRetryable(err error) bool {
	var r interface{ Retryable() bool }
	return errors.As(err, &r) && r.Retryable()
}

// IsThrottled reports whether err is, or wraps, a 429 answer.
func IsThrottled(err error) bool {
	var e *APIError
	return errors.As(err, &e) && e.StatusCode == http.StatusTooManyRequests
}

// IsAuthFailure reports whether err is, or wraps, a 401 or 403 answer.
func IsAuthFailure(err error) bool {
	var e *APIError
	return errors.As(err, &e) && (e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden)
}

// newAPIError builds the error for a non-2xx response from its status, headers and body.
// Text from the server is scrubbed of secrets before it is shortened, so that no prefix of a
// secret survives.
func newAPIError(op string, resp *http.Response, body []byte, now time.Time, secrets []string) *APIError {
	e := &APIError{
		Operation:  op,
		StatusCode: resp.StatusCode,
		RequestID:  sanitize(scrub(resp.Header.Get("X-Request-Id"), secrets), 64),
		RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), now),
	}
	if code, msg, ok := parseErrorBody(body); ok {
		e.Code, e.Message = sanitize(scrub(code, secrets), 64), sanitize(scrub(msg, secrets), maxExcerpt)
	} else {
		e.Excerpt = sanitize(scrub(string(body), secrets), maxExcerpt)
	}
	return e
}

// parseErrorBody reads {"error":{"error_code","error_msg"}} and, as API gateways answer,
// {"error_code","error_msg"}.
func parseErrorBody(body []byte) (code, msg string, ok bool) {
	type detail struct {
		Code json.RawMessage `json:"error_code"`
		Msg  json.RawMessage `json:"error_msg"`
	}
	var v struct {
		Error *detail `json:"error"`
		detail
	}
	if firstByte(body) != '{' || json.Unmarshal(body, &v) != nil {
		return "", "", false
	}
	d := v.detail
	if v.Error != nil {
		d = *v.Error
	}
	code, _ = scalar(d.Code)
	msg, _ = scalar(d.Msg)
	return code, msg, code != "" || msg != ""
}

// parseRetryAfter reads delta-seconds or an HTTP date; anything else is zero.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, 86400)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// sanitize makes untrusted text safe for errors and logs: valid UTF-8, no control characters,
// runs of white space collapsed, at most n bytes.
func sanitize(s string, n int) string {
	s = strings.ToValidUTF8(s, "?")
	var b strings.Builder
	space := false
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			space = true
			continue
		}
		if !unicode.IsPrint(r) {
			r = '?'
		}
		sep := space && b.Len() > 0
		space = false
		if b.Len()+utf8.RuneLen(r)+btoi(sep) > n {
			break
		}
		if sep {
			b.WriteByte(' ')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
