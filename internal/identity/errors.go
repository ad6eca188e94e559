package identity

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The methods, as Error names them.
const (
	methodWorkloadIdentity = "workload identity"
	methodNodeAgency       = "node agency"
	methodPodIdentity      = "pod identity"
)

// Error is a failure to obtain credentials. Its text names the method, the step, the status and
// error code the service answered, and what to check; it never holds a token or a key.
type Error struct {
	// Method is "workload identity", "node agency" or "pod identity".
	Method string
	// Step is the call that failed, such as "IAM id-token exchange".
	Step string
	// Status is the HTTP status answered, 0 when none was.
	Status int
	// Code is the service's error code, such as IAM.0001, when it sent one.
	Code string
	// Message is what the service or the client said, with every secret removed.
	Message string
	// Hint says what to check.
	Hint string
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", e.Method, e.Step)
	if e.Status != 0 {
		fmt.Fprintf(&b, " answered %d", e.Status)
		if e.Code != "" {
			fmt.Fprintf(&b, " %s", e.Code)
		}
	} else {
		b.WriteString(" failed")
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.Hint != "" {
		fmt.Fprintf(&b, "; %s", e.Hint)
	}
	return b.String()
}

// maxMessage bounds how much of a service's error message an Error keeps.
const maxMessage = 300

// maxBody bounds every answer read: the largest, a credential, is a few kilobytes.
const maxBody = 64 << 10

// call sends one request and returns the answer's status, headers and body. A transport error
// or an answer other than one of want becomes an *Error; secrets are removed from its message.
func call(ctx context.Context, c *http.Client, req *http.Request, method, step string, secrets []string, want ...int) (http.Header, []byte, *Error) {
	resp, err := c.Do(req.WithContext(ctx))
	if err != nil {
		return nil, nil, &Error{Method: method, Step: step, Message: scrub(err.Error(), secrets)}
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, nil, &Error{Method: method, Step: step, Status: resp.StatusCode, Message: "reading the answer: " + scrub(err.Error(), secrets)}
	}
	if len(body) > maxBody {
		return nil, nil, &Error{Method: method, Step: step, Status: resp.StatusCode, Message: fmt.Sprintf("the answer is longer than %d bytes", maxBody)}
	}
	for _, s := range want {
		if resp.StatusCode == s {
			return resp.Header, body, nil
		}
	}
	// JSON is decoded before secrets are removed, so that an escaped echo (\u0070od-...) is
	// caught; secrets are removed before the message is shortened, so that no part of one is
	// left.
	code, msg := errorBody(body)
	return nil, nil, &Error{Method: method, Step: step, Status: resp.StatusCode,
		Code: truncate(scrub(code, secrets)), Message: truncate(scrub(msg, secrets))}
}

// errorBody reads the error code and message of an answer in either of Huawei Cloud's shapes,
// {"error_code","error_msg"} and {"error":{"code","message"}}, or else its text; it neither
// scrubs nor shortens them.
func errorBody(body []byte) (code, message string) {
	var flat struct {
		Code    any    `json:"error_code"`
		Message string `json:"error_msg"`
		Nested  *struct {
			Code    any    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &flat) == nil {
		switch {
		case flat.Code != nil || flat.Message != "":
			return codeString(flat.Code), flat.Message
		case flat.Nested != nil:
			return codeString(flat.Nested.Code), flat.Nested.Message
		}
	}
	return "", string(bytes.TrimSpace(body))
}

func codeString(v any) string {
	switch c := v.(type) {
	case string:
		return c
	case float64:
		return strconv.FormatFloat(c, 'f', -1, 64)
	}
	return ""
}

// truncate keeps at most maxMessage bytes of s, on one line.
func truncate(s string) string {
	if !utf8.ValidString(s) {
		return "(an answer that is not text)"
	}
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if len(s) <= maxMessage {
		return s
	}
	cut := maxMessage
	for !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// scrub removes every secret from s.
func scrub(s string, secrets []string) string {
	for _, w := range secrets {
		if len(w) >= 4 {
			s = strings.ReplaceAll(s, w, "[redacted]")
		}
	}
	return s
}

// methodOf names the method of a source, for errors.
func methodOf(src Source) string {
	switch src.(type) {
	case WorkloadIdentity:
		return methodWorkloadIdentity
	case NodeAgency:
		return methodNodeAgency
	case PodIdentity:
		return methodPodIdentity
	}
	return "identity"
}

// IsError tells whether err is a failure to obtain credentials.
func IsError(err error) bool {
	var e *Error
	return errors.As(err, &e)
}
