package kms

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// FuzzDecodeListResponse: the decoder never panics, and whatever it accepts is usable: every key
// has an ID, a non-nil Tags map and a known-or-Unknown state; total_count is not negative.
// Longer run: go test -run=^$ -fuzz=FuzzDecodeListResponse -fuzztime=30s ./internal/kms/
func FuzzDecodeListResponse(f *testing.F) {
	seed, err := os.ReadFile("testdata/seed_response.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	for _, s := range []string{
		`{"resources":[],"total_count":0}`,
		`{"resources":[{"resource_id":"a","resource_detail":{"key_id":"a","key_state":"2","creation_date":"1521449277"}}],"total_count":"1"}`,
		`{"resources":[{"resource_detail":[{"key_id":1,"default_key_flag":true,"expiration_time":1e12}]}],"total_count":1}`,
		`{"resources":[{"resource_id":"a","tags":[{"key":"k","value":null}]}],"total_count":1}`,
		`{"resources":[null],"total_count":1}`,
		`{"total_count":-1}`,
		`{"resources":[{"resource_detail":"x"}],"total_count":1}`,
		`{"error":{"error_code":"KMS.0202","error_msg":"x"}}`,
		`[]`, `null`, `{`, ``, `{"resources":[{"resource_id":"a","resource_detail":{"creation_date":"NaN"}}],"total_count":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, total, err := DecodeListResponse(data)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a *DecodeError", err)
			}
			if keys != nil || total != 0 {
				t.Fatal("an error must come without results")
			}
			return
		}
		if total < 0 {
			t.Fatalf("total %d", total)
		}
		for _, k := range keys {
			if k.ID == "" || k.Tags == nil || k.State < StateUnknown || k.State > StatePendingImport {
				t.Fatalf("unusable key %+v", k)
			}
		}
	})
}

// FuzzBuildRequestBody: any filter that passes Validate renders to JSON that decodes back to the
// same filter, with limit and offset as decimal strings.
// Longer run: go test -run=^$ -fuzz=FuzzBuildRequestBody -fuzztime=30s ./internal/kms/
func FuzzBuildRequestBody(f *testing.F) {
	f.Add("key1", "value1\x1fvalue2", "resource1", 100, 100, false)
	f.Add("env", "", "", 1000, 0, false)
	f.Add("環境", "a&b\x1f€\x1f<", "db-*", 1, 2500, true)
	f.Add("", "", "", 0, -1, false)
	f.Add("k\u2028", "\"quoted\"\x1f'\x1f\u007f", "\\", 999, 1001, false)
	f.Fuzz(func(t *testing.T, key, values, match string, limit, offset int, count bool) {
		filter := Filter{}
		// One tag per ';'-separated key, each with the '\x1f'-separated values ('\x1f' itself is
		// forbidden, so it cannot be part of a valid value).
		for _, k := range strings.Split(key, ";") {
			tag := TagFilter{Key: k}
			if values != "" {
				tag.Values = strings.Split(values, "\x1f")
			}
			filter.Tags = append(filter.Tags, tag)
		}
		if match != "" {
			filter.Matches = []Match{{Key: MatchResourceName, Value: match}}
		}
		action := ActionFilter
		if count {
			action = ActionCount
		}
		body, err := buildRequestBody(filter, action, limit, offset)
		validErr := filter.Validate()
		pagingOK := count || (limit >= 1 && limit <= MaxPageSize && offset >= 0)
		if (err == nil) != (validErr == nil && pagingOK) {
			t.Fatalf("build err %v, validate err %v, paging ok %v", err, validErr, pagingOK)
		}
		if err != nil {
			return
		}
		var got struct {
			Action string
			Limit  *string
			Offset *string
			Tags   []struct {
				Key    string
				Values []string
			}
			Matches []struct{ Key, Value string }
		}
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("body %q does not decode: %v", body, err)
		}
		if got.Action != action {
			t.Fatalf("action %q", got.Action)
		}
		if count {
			if got.Limit != nil || got.Offset != nil {
				t.Fatalf("count body carries paging: %s", body)
			}
		} else if got.Limit == nil || got.Offset == nil || *got.Limit != strconv.Itoa(limit) || *got.Offset != strconv.Itoa(offset) {
			t.Fatalf("paging not sent as strings: %s", body)
		}
		if len(got.Tags) != len(filter.Tags) || len(got.Matches) != len(filter.Matches) {
			t.Fatalf("round trip lost entries: %s", body)
		}
		for i, tag := range filter.Tags {
			want := tag.Values
			if want == nil {
				want = []string{}
			}
			if got.Tags[i].Key != tag.Key || !reflect.DeepEqual(got.Tags[i].Values, want) {
				t.Fatalf("tag %d: got %+v, want %+v", i, got.Tags[i], tag)
			}
		}
		for i, m := range filter.Matches {
			if got.Matches[i].Key != string(m.Key) || got.Matches[i].Value != m.Value {
				t.Fatalf("match %d: got %+v, want %+v", i, got.Matches[i], m)
			}
		}
	})
}
