package kms

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// DecodeError reports a 200 response whose body could not be understood. Retryable is true only
// when the body was not valid JSON at all (typically truncated by a proxy); a well-formed body
// that breaks the contract, such as a resource without any key id, is not retried.
type DecodeError struct {
	// Syntax is true when the body was not valid JSON.
	Syntax bool
	Err    error
}

func (e *DecodeError) Error() string { return "decode response: " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *DecodeError) Unwrap() error { return e.Err }

// Retryable reports whether sending the request again may help.
func (e *DecodeError) Retryable() bool { return e.Syntax }

// millisThreshold separates epoch seconds from epoch milliseconds: 1e11 seconds is the year 5138,
// 1e11 milliseconds is March 1973.
const millisThreshold = 1e11

// DecodeListResponse decodes a 200 body of ListKmsByTags tolerantly (see docs/kms-api.md,
// "Tolerant decoding"): scalar fields may be strings, numbers or booleans; resource_detail may be
// an object or an array of one object; dates may be epoch seconds or milliseconds, as numbers or
// numeric strings, with "" meaning none; total_count may be a number or a numeric string; unknown
// fields are ignored. A resource without key_id and resource_id, a missing or negative
// total_count, and malformed values of known fields are errors (*DecodeError). Keys are returned
// in response order.
func DecodeListResponse(data []byte) (keys []Key, total int, err error) {
	var resp struct {
		Resources  []wireResource  `json:"resources"`
		TotalCount json.RawMessage `json:"total_count"`
	}
	if err := unmarshalObject(data, &resp); err != nil {
		return nil, 0, err
	}
	total, err = decodeTotal(resp.TotalCount)
	if err != nil {
		return nil, 0, &DecodeError{Err: err}
	}
	keys = make([]Key, 0, len(resp.Resources))
	for i, r := range resp.Resources {
		k, err := decodeResource(r)
		if err != nil {
			return nil, 0, &DecodeError{Err: fmt.Errorf("resources[%d]: %w", i, err)}
		}
		keys = append(keys, k)
	}
	return keys, total, nil
}

// decodeCountResponse decodes the body of action=count: only total_count matters.
func decodeCountResponse(data []byte) (int, error) {
	var resp struct {
		TotalCount json.RawMessage `json:"total_count"`
	}
	if err := unmarshalObject(data, &resp); err != nil {
		return 0, err
	}
	total, err := decodeTotal(resp.TotalCount)
	if err != nil {
		return 0, &DecodeError{Err: err}
	}
	return total, nil
}

// unmarshalObject decodes a JSON object, telling malformed JSON apart from a wrong shape.
func unmarshalObject(data []byte, v any) error {
	err := json.Unmarshal(data, v)
	var syntax *json.SyntaxError
	switch {
	case errors.As(err, &syntax) || errors.Is(err, io.ErrUnexpectedEOF) || firstByte(data) == 0:
		return &DecodeError{Syntax: true, Err: errors.New("body is not valid JSON")}
	case firstByte(data) != '{':
		return &DecodeError{Err: errors.New("body is not a JSON object")}
	case err != nil:
		return &DecodeError{Err: err}
	}
	return nil
}

func decodeTotal(raw json.RawMessage) (int, error) {
	s, err := scalar(raw)
	if err != nil {
		return 0, fmt.Errorf("total_count: %w", err)
	}
	if s == "" {
		return 0, errors.New("total_count: missing")
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("total_count: not a non-negative integer: %q", truncate(s, 32))
	}
	return n, nil
}

// wireResource is one element of "resources"; every field is decoded lazily so that each
// tolerated form can be handled and each error can name its field.
type wireResource struct {
	ResourceID   json.RawMessage `json:"resource_id"`
	ResourceName json.RawMessage `json:"resource_name"`
	Detail       json.RawMessage `json:"resource_detail"`
	Tags         json.RawMessage `json:"tags"`
}

type wireDetail struct {
	KeyID          json.RawMessage `json:"key_id"`
	DomainID       json.RawMessage `json:"domain_id"`
	Alias          json.RawMessage `json:"key_alias"`
	Realm          json.RawMessage `json:"realm"`
	Spec           json.RawMessage `json:"key_spec"`
	Usage          json.RawMessage `json:"key_usage"`
	Description    json.RawMessage `json:"key_description"`
	CreationDate   json.RawMessage `json:"creation_date"`
	DeletionDate   json.RawMessage `json:"scheduled_deletion_date"`
	State          json.RawMessage `json:"key_state"`
	DefaultFlag    json.RawMessage `json:"default_key_flag"`
	Type           json.RawMessage `json:"key_type"`
	ExpirationTime json.RawMessage `json:"expiration_time"`
	Origin         json.RawMessage `json:"origin"`
	Rotation       json.RawMessage `json:"key_rotation_enabled"`
	EnterpriseID   json.RawMessage `json:"sys_enterprise_project_id"`
}

type wireTag struct {
	Key   json.RawMessage `json:"key"`
	Value json.RawMessage `json:"value"`
}

func decodeResource(r wireResource) (Key, error) {
	var d fieldDecoder
	detail, err := decodeDetail(r.Detail)
	if err != nil {
		return Key{}, err
	}
	k := Key{
		ID:                    d.str("resource_detail.key_id", detail.KeyID),
		Alias:                 d.str("resource_detail.key_alias", detail.Alias),
		Description:           d.str("resource_detail.key_description", detail.Description),
		DomainID:              d.str("resource_detail.domain_id", detail.DomainID),
		Realm:                 d.str("resource_detail.realm", detail.Realm),
		Spec:                  d.str("resource_detail.key_spec", detail.Spec),
		Usage:                 d.str("resource_detail.key_usage", detail.Usage),
		Origin:                d.str("resource_detail.origin", detail.Origin),
		Type:                  d.str("resource_detail.key_type", detail.Type),
		State:                 parseState(d.str("resource_detail.key_state", detail.State)),
		Default:               d.boolean("resource_detail.default_key_flag", detail.DefaultFlag),
		RotationEnabled:       d.boolean("resource_detail.key_rotation_enabled", detail.Rotation),
		EnterpriseProjectID:   d.str("resource_detail.sys_enterprise_project_id", detail.EnterpriseID),
		CreationDate:          d.date("resource_detail.creation_date", detail.CreationDate),
		ScheduledDeletionDate: d.date("resource_detail.scheduled_deletion_date", detail.DeletionDate),
		ExpirationTime:        d.date("resource_detail.expiration_time", detail.ExpirationTime),
	}
	if k.ID == "" {
		k.ID = d.str("resource_id", r.ResourceID)
	}
	if k.Alias == "" {
		k.Alias = d.str("resource_name", r.ResourceName)
	}
	k.Tags = d.tags(r.Tags)
	if d.err != nil {
		return Key{}, d.err
	}
	if k.ID == "" {
		return Key{}, errors.New("missing key id: neither resource_detail.key_id nor resource_id is set")
	}
	return k, nil
}

// decodeDetail accepts resource_detail as an object, an array of at most one object, or null.
func decodeDetail(raw json.RawMessage) (wireDetail, error) {
	var d wireDetail
	switch firstByte(raw) {
	case 0, 'n':
		return d, nil
	case '{':
		if err := json.Unmarshal(raw, &d); err != nil {
			return d, fmt.Errorf("resource_detail: %w", err)
		}
		return d, nil
	case '[':
		var list []json.RawMessage
		if err := json.Unmarshal(raw, &list); err != nil {
			return d, fmt.Errorf("resource_detail: %w", err)
		}
		switch len(list) {
		case 0:
			return d, nil
		case 1:
			return decodeDetail(list[0])
		default:
			return d, fmt.Errorf("resource_detail: array of %d objects, expected one", len(list))
		}
	default:
		return d, errors.New("resource_detail: expected an object or an array of one object")
	}
}

// fieldDecoder converts raw fields and remembers the first error, so that a resource decodes in
// one readable expression.
type fieldDecoder struct {
	err error
}

func (d *fieldDecoder) fail(field string, err error) {
	if d.err == nil {
		d.err = fmt.Errorf("%s: %w", field, err)
	}
}

func (d *fieldDecoder) str(field string, raw json.RawMessage) string {
	s, err := scalar(raw)
	if err != nil {
		d.fail(field, err)
	}
	return s
}

func (d *fieldDecoder) boolean(field string, raw json.RawMessage) bool {
	s := d.str(field, raw)
	if s == "" {
		return false
	}
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		d.fail(field, fmt.Errorf("not a boolean: %q", truncate(s, 32)))
	}
	return b
}

func (d *fieldDecoder) date(field string, raw json.RawMessage) time.Time {
	t, err := parseDate(d.str(field, raw))
	if err != nil {
		d.fail(field, err)
	}
	return t
}

func (d *fieldDecoder) tags(raw json.RawMessage) map[string]string {
	out := map[string]string{}
	if c := firstByte(raw); c == 0 || c == 'n' {
		return out
	}
	var list []wireTag
	if err := json.Unmarshal(raw, &list); err != nil {
		d.fail("tags", errors.New("expected an array of {key, value}"))
		return out
	}
	out = make(map[string]string, len(list))
	for i, t := range list {
		key, keyErr := scalar(t.Key)
		value, valueErr := scalar(t.Value)
		if keyErr != nil {
			d.fail(fmt.Sprintf("tags[%d].key", i), keyErr)
		}
		if valueErr != nil {
			d.fail(fmt.Sprintf("tags[%d].value", i), valueErr)
		}
		out[key] = value
	}
	return out
}

// scalar renders a JSON scalar as a string: a string as itself, a number as its literal text,
// a boolean as "true" or "false", null or absence as "". Objects and arrays are errors.
func scalar(raw json.RawMessage) (string, error) {
	switch c := firstByte(raw); {
	case c == 0 || c == 'n':
		return "", nil
	case c == '"':
		if s, ok := plainString(raw); ok {
			return s, nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", err
		}
		return s, nil
	case c == 't' || c == 'f' || c == '-' || (c >= '0' && c <= '9'):
		return string(bytes.TrimSpace(raw)), nil
	default:
		return "", errors.New("expected a string, number or boolean")
	}
}

// plainString returns the content of a JSON string without escapes, the common case, without
// running the decoder.
func plainString(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	inner := raw[1 : len(raw)-1]
	for _, b := range inner {
		if b == '\\' || b == '"' || b < 0x20 || b >= utf8.RuneSelf {
			return "", false
		}
	}
	return string(inner), true
}

// parseDate reads an epoch timestamp in seconds or milliseconds (values above 1e11 are
// milliseconds), given as a number or numeric string; "" and 0 mean no date. RFC 3339 is
// accepted as well.
func parseDate(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		if t, terr := time.Parse(time.RFC3339, s); terr == nil {
			return t.UTC(), nil
		}
		return time.Time{}, fmt.Errorf("not an epoch timestamp: %q", truncate(s, 32))
	}
	switch {
	case f == 0:
		return time.Time{}, nil
	case f < 0 || math.IsNaN(f) || math.IsInf(f, 0) || f > 1e15:
		return time.Time{}, fmt.Errorf("epoch timestamp out of range: %q", truncate(s, 32))
	case f > millisThreshold:
		return time.UnixMilli(int64(f)).UTC(), nil
	default:
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(frac*1e9)).UTC(), nil
	}
}

// parseState maps key_state to a State; anything but 1..5 is StateUnknown.
func parseState(s string) State {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < int(StatePendingActivation) || n > int(StatePendingImport) {
		return StateUnknown
	}
	return State(n)
}

// firstByte returns the first non-space byte of raw, or 0 when there is none.
func firstByte(raw []byte) byte {
	t := bytes.TrimLeft(raw, " \t\r\n")
	if len(t) == 0 {
		return 0
	}
	return t[0]
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
