package kms

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// The two actions of ListKmsByTags; they are also the operation names reported to an Observer.
const (
	ActionFilter = "filter"
	ActionCount  = "count"
)

// requestBody is the JSON body of ListKmsByTags. limit and offset are strings on the wire.
type requestBody struct {
	Action  string      `json:"action"`
	Limit   string      `json:"limit,omitempty"`
	Offset  string      `json:"offset,omitempty"`
	Tags    []tagBody   `json:"tags,omitempty"`
	Matches []matchBody `json:"matches,omitempty"`
}

type tagBody struct {
	Key    string   `json:"key"`
	Values []string `json:"values"`
}

type matchBody struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// buildRequestBody renders one ListKmsByTags request. The filter is validated first. For
// ActionFilter, limit must be 1..MaxPageSize and offset non-negative, and both are sent as
// strings; for ActionCount they are ignored and omitted. Tags and matches keep the filter's order,
// and an empty Values list is sent as [] ("the key with any value"). The output is compact JSON
// without HTML escaping, so the exact bytes can be signed and sent.
func buildRequestBody(f Filter, action string, limit, offset int) ([]byte, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	body := requestBody{Action: action}
	switch action {
	case ActionFilter:
		if limit < 1 || limit > MaxPageSize {
			return nil, fmt.Errorf("limit must be between 1 and %d, got %d", MaxPageSize, limit)
		}
		if offset < 0 {
			return nil, fmt.Errorf("offset must not be negative, got %d", offset)
		}
		body.Limit = strconv.Itoa(limit)
		body.Offset = strconv.Itoa(offset)
	case ActionCount:
	default:
		return nil, fmt.Errorf("action must be %q or %q, got %q", ActionFilter, ActionCount, action)
	}
	for _, t := range f.Tags {
		values := make([]string, len(t.Values))
		copy(values, t.Values)
		body.Tags = append(body.Tags, tagBody{Key: t.Key, Values: values})
	}
	for _, m := range f.Matches {
		body.Matches = append(body.Matches, matchBody{Key: string(m.Key), Value: m.Value})
	}
	return marshalCompact(body)
}

func marshalCompact(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encode request body: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
