package kmstest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The actions of ListKmsByTags.
const (
	ActionFilter = "filter"
	ActionCount  = "count"
)

const (
	// DefaultLimit is the page size of a filter request without limit.
	DefaultLimit = 10
	// SequenceLength is the byte length a sequence must have.
	SequenceLength  = 36
	maxOffsetDigits = 9
)

// wireRequest is the request body as sent. Pointers and raw messages tell absent from empty.
type wireRequest struct {
	Action   *string         `json:"action"`
	Limit    json.RawMessage `json:"limit"`
	Offset   json.RawMessage `json:"offset"`
	Tags     []wireTag       `json:"tags"`
	Matches  []wireMatch     `json:"matches"`
	Sequence *string         `json:"sequence"`
}

type wireTag struct {
	Key    *string  `json:"key"`
	Values []string `json:"values"`
}

type wireMatch struct {
	Key   *string `json:"key"`
	Value *string `json:"value"`
}

// query is a validated request.
type query struct {
	action   string
	limit    int
	offset   int
	tags     []tagCond
	names    []string // resource_name substrings, ANDed
	sequence string
}

// tagCond selects keys carrying key with one of values (any value when values is empty).
type tagCond struct {
	key    string
	values []string
}

// decodeWire decodes a body. The error, if any, is the KMS answer to give once the request is
// authenticated; the returned wireRequest is best effort, for fault matching.
func decodeWire(body []byte) (wireRequest, *apiError) {
	var w wireRequest
	if len(bytes.TrimSpace(body)) == 0 {
		return w, badRequest(CodeMissingParameter, "missing request body")
	}
	err := json.Unmarshal(body, &w)
	if err == nil {
		return w, nil
	}
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) && typeErr.Field != "" {
		return w, invalidParam(typeErr.Field, "must not be a JSON %s", typeErr.Value)
	}
	return w, badRequest(CodeInvalidJSON, "the request body is not a valid JSON object: %v", err)
}

// actionHint is the action named by a possibly invalid request, for fault matching.
func (w *wireRequest) actionHint() string {
	if w.Action == nil {
		return ""
	}
	return *w.Action
}

// offsetHint is the offset of a possibly invalid request, for fault matching.
func (w *wireRequest) offsetHint() int {
	n, err := parseNumber(w.Offset, "offset", 0, 0, -1)
	if err != nil {
		return 0
	}
	return n
}

// validate turns a decoded body into a query or a KMS error.
func (w *wireRequest) validate() (query, *apiError) {
	var q query
	if w.Action == nil {
		return q, missingParam("action")
	}
	q.action = *w.Action
	if q.action != ActionFilter && q.action != ActionCount {
		return q, invalidParam("action", "must be %q or %q, got %q", ActionFilter, ActionCount, q.action)
	}
	if q.action == ActionFilter {
		var err *apiError
		if q.limit, err = parseNumber(w.Limit, "limit", DefaultLimit, 1, MaxPageSize); err != nil {
			return q, err
		}
		if q.offset, err = parseNumber(w.Offset, "offset", 0, 0, -1); err != nil {
			return q, err
		}
	}
	var err *apiError
	if q.tags, err = validateTags(w.Tags); err != nil {
		return q, err
	}
	if q.names, err = validateMatches(w.Matches); err != nil {
		return q, err
	}
	if w.Sequence != nil {
		q.sequence = *w.Sequence
		if len(q.sequence) != SequenceLength {
			return q, invalidParam("sequence", "must be %d bytes, got %d", SequenceLength, len(q.sequence))
		}
	}
	return q, nil
}

// parseNumber parses limit or offset: a JSON string of decimal digits within [lo, hi]
// (hi < 0: no upper bound). An absent or null field yields def.
func parseNumber(raw json.RawMessage, field string, def, lo, hi int) (int, *apiError) {
	if len(raw) == 0 || string(raw) == "null" {
		return def, nil
	}
	var s string
	if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return 0, invalidParam(field, "must be a JSON string, got %s", raw)
	}
	n, err := parseDigits(s)
	if err != nil {
		return 0, invalidParam(field, "%v", err)
	}
	if n < lo || (hi >= 0 && n > hi) {
		if hi < 0 {
			return 0, invalidParam(field, "must be at least %d, got %d", lo, n)
		}
		return 0, invalidParam(field, "must be between %d and %d, got %d", lo, hi, n)
	}
	return n, nil
}

// parseDigits parses a non-negative decimal number of at most maxOffsetDigits digits.
func parseDigits(s string) (int, error) {
	if s == "" {
		return 0, errors.New("must not be empty")
	}
	if strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("must be a non-negative decimal integer, got %q", s)
	}
	if len(s) > maxOffsetDigits {
		return 0, fmt.Errorf("must have at most %d digits, got %q", maxOffsetDigits, s)
	}
	return strconv.Atoi(s)
}

func validateTags(tags []wireTag) ([]tagCond, *apiError) {
	if len(tags) > MaxTags {
		return nil, invalidParam("tags", "at most %d keys, got %d", MaxTags, len(tags))
	}
	conds := make([]tagCond, 0, len(tags))
	seen := make(map[string]bool, len(tags))
	for i, t := range tags {
		field := fmt.Sprintf("tags[%d].key", i)
		if t.Key == nil {
			return nil, missingParam(field)
		}
		if err := checkTagText(field, *t.Key, MaxTagKeyLength, false); err != nil {
			return nil, err
		}
		if seen[*t.Key] {
			return nil, invalidParam(field, "duplicate key %q", *t.Key)
		}
		seen[*t.Key] = true
		if err := checkTagValues(i, t.Values); err != nil {
			return nil, err
		}
		conds = append(conds, tagCond{key: *t.Key, values: t.Values})
	}
	return conds, nil
}

func checkTagValues(i int, values []string) *apiError {
	seen := make(map[string]bool, len(values))
	for j, v := range values {
		field := fmt.Sprintf("tags[%d].values[%d]", i, j)
		if err := checkTagText(field, v, MaxTagValueLength, true); err != nil {
			return err
		}
		if seen[v] {
			return invalidParam(field, "duplicate value %q", v)
		}
		seen[v] = true
	}
	return nil
}

// checkTagText applies the tag rules of internal/kms/rules.go to a key or a value.
func checkTagText(field, s string, maxLen int, emptyOK bool) *apiError {
	if s == "" && !emptyOK {
		return invalidParam(field, "must not be empty")
	}
	if n := utf8.RuneCountInString(s); n > maxLen {
		return invalidParam(field, "at most %d characters, got %d", maxLen, n)
	}
	for _, r := range s {
		if r < 0x20 || strings.ContainsRune(ForbiddenTagChars, r) {
			return invalidParam(field, "must not contain ASCII control characters or any of %s, got %q", ForbiddenTagChars, r)
		}
	}
	return nil
}

func validateMatches(matches []wireMatch) ([]string, *apiError) {
	names := make([]string, 0, len(matches))
	for i, m := range matches {
		if m.Key == nil {
			return nil, missingParam(fmt.Sprintf("matches[%d].key", i))
		}
		if MatchKey(*m.Key) != MatchResourceName {
			return nil, invalidParam(fmt.Sprintf("matches[%d].key", i), "unsupported match key %q, only %q", *m.Key, MatchResourceName)
		}
		field := fmt.Sprintf("matches[%d].value", i)
		if m.Value == nil {
			return nil, missingParam(field)
		}
		if *m.Value == "" {
			return nil, invalidParam(field, "must not be empty")
		}
		if n := utf8.RuneCountInString(*m.Value); n > MaxMatchValueLength {
			return nil, invalidParam(field, "at most %d characters, got %d", MaxMatchValueLength, n)
		}
		names = append(names, *m.Value)
	}
	return names, nil
}

// matches reports whether k satisfies the query's tag conditions and name matches.
func (q *query) matches(k *Key) bool {
	for _, c := range q.tags {
		v, ok := k.Tags[c.key]
		if !ok || (len(c.values) > 0 && !slices.Contains(c.values, v)) {
			return false
		}
	}
	for _, n := range q.names {
		if !strings.Contains(k.Alias, n) {
			return false
		}
	}
	return true
}
