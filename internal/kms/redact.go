package kms

import (
	"net/http"
	"sort"
	"strings"
)

const redacted = "[redacted]"

// sensitiveHeaders carry credentials; their values never reach a log line or an error.
var sensitiveHeaders = map[string]bool{
	"Authorization":    true,
	"X-Auth-Token":     true,
	"X-Security-Token": true,
}

// redactHeaders renders headers for a log line, with the values of credential headers replaced.
func redactHeaders(h http.Header) []string {
	names := make([]string, 0, len(h))
	for name := range h {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make([]string, 0, len(names))
	for _, name := range names {
		value := strings.Join(h[name], ",")
		if sensitiveHeaders[http.CanonicalHeaderKey(name)] {
			value = redacted
		}
		out = append(out, name+": "+value)
	}
	return out
}

// scrub replaces every occurrence of a secret in s. It is the last line of defence for text that
// leaves the client (errors, logs) and that came from elsewhere, such as a server echoing a header.
func scrub(s string, secrets []string) string {
	for _, w := range secrets {
		if strings.Contains(s, w) {
			s = strings.ReplaceAll(s, w, redacted)
		}
	}
	return s
}
