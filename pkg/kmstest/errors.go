package kmstest

import (
	"fmt"
	"net/http"
	"strings"
)

// The KMS error codes the emulator answers with; the package comment says when. CodeInternal
// and CodeAPINotPermitted are only answered by an injected FaultKMSError.
const (
	CodeInternal         = "KMS.0101"
	CodeInvalidURL       = "KMS.0201"
	CodeInvalidJSON      = "KMS.0202"
	CodeMessageTooLong   = "KMS.0203"
	CodeMissingParameter = "KMS.0204"
	CodeInvalidParameter = "KMS.0206"
	CodeTokenMissing     = "KMS.0301"
	CodeTokenInvalid     = "KMS.0302"
	CodeTokenExpired     = "KMS.0303"
	CodeProjectMismatch  = "KMS.0305"
	CodeAPINotPermitted  = "KMS.0307"
)

// ErrorBody is the JSON body of a KMS error answer: every 4xx answer except the 429 of
// FaultThrottle, and the answer of FaultKMSError.
type ErrorBody struct {
	// Error is the body's "error" object.
	Error ErrorDetail `json:"error"`
}

// ErrorDetail carries the KMS error code and message.
type ErrorDetail struct {
	// Code is a KMS code, one of the Code constants for the emulator's own answers.
	Code string `json:"error_code"`
	// Message says what was wrong and names the offending field.
	Message string `json:"error_msg"`
}

// apiError is an answer with a KMS error body.
type apiError struct {
	status int
	code   string
	msg    string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.status, e.code, e.msg) }

func newAPIError(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

func badRequest(code, format string, args ...any) *apiError {
	return newAPIError(http.StatusBadRequest, code, format, args...)
}

func invalidParam(field, format string, args ...any) *apiError {
	return badRequest(CodeInvalidParameter, "invalid parameter %q: %s", field, fmt.Sprintf(format, args...))
}

func missingParam(field string) *apiError {
	return badRequest(CodeMissingParameter, "missing parameter %q", field)
}

func forbidden(code, format string, args ...any) *apiError {
	return newAPIError(http.StatusForbidden, code, format, args...)
}

// statusForCode picks the HTTP status a KMS code is normally sent with.
func statusForCode(code string) int {
	switch {
	case strings.HasPrefix(code, "KMS.03"):
		return http.StatusForbidden
	case strings.HasPrefix(code, "KMS.01"):
		return http.StatusInternalServerError
	default:
		return http.StatusBadRequest
	}
}

var codeMessages = map[string]string{
	CodeInternal:         "internal error",
	CodeInvalidURL:       "invalid request URL",
	CodeInvalidJSON:      "the JSON format of the request message is invalid",
	CodeMessageTooLong:   "the request message length has exceeded the upper limit",
	CodeMissingParameter: "the request message lacks required parameters",
	CodeInvalidParameter: "invalid parameter",
	CodeTokenMissing:     "the value of X-Auth-Token is null or invalid",
	CodeTokenInvalid:     "invalid X-Auth-Token",
	CodeTokenExpired:     "X-Auth-Token has expired",
	CodeProjectMismatch:  "invalid X-Auth-Token project name",
	CodeAPINotPermitted:  "the user role has no permission to access the API",
}

// messageForCode is the default message of a KMS code.
func messageForCode(code string) string {
	if m, ok := codeMessages[code]; ok {
		return m
	}
	return "request failed"
}
