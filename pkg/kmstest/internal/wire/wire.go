// Package wire is the HTTP and JSON plumbing the KMS emulator (pkg/kmstest) and the IAM
// emulator (pkg/kmstest/iamtest) share: how their admin APIs read and answer JSON, how a
// handler splits the admin API from the emulated one, and how answers are encoded.
package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// MaxAdminBody bounds the body of an admin request.
const MaxAdminBody = 64 << 20

// ByPrefix sends the requests whose path starts with prefix to matched, and the others to other.
// Paths are taken as sent, uncleaned, since the API's answers to odd paths are part of what is
// emulated.
func ByPrefix(prefix string, matched, other http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, prefix) {
			matched.ServeHTTP(w, r)
			return
		}
		other.ServeHTTP(w, r)
	})
}

// Marshal encodes v without HTML escaping and without the trailing newline.
func Marshal(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only plain structs, maps, slices and strings are encoded here.
		return []byte(`{}`)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// Decode decodes exactly one JSON value from r into v, rejecting unknown fields.
func Decode(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	if dec.More() {
		return errors.New("decode: trailing data after the JSON value")
	}
	return nil
}

// DecodeAdminBody decodes an admin request's body, of at most MaxAdminBody bytes, as Decode does.
func DecodeAdminBody(r *http.Request, v any) error {
	return Decode(io.LimitReader(r.Body, MaxAdminBody), v)
}

// AdminJSON answers an admin request with v as indented JSON.
func AdminJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// AdminError answers an admin request with {"error": "..."}.
func AdminError(w http.ResponseWriter, status int, err error) {
	AdminJSON(w, status, map[string]string{"error": err.Error()})
}

// ReadAdminBody reads an admin body that may be one JSON value or an array of them, and says
// which.
func ReadAdminBody(r *http.Request) ([]byte, bool, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, MaxAdminBody))
	if err != nil {
		return nil, false, fmt.Errorf("read body: %w", err)
	}
	b = bytes.TrimSpace(b)
	return b, len(b) > 0 && b[0] == '[', nil
}
