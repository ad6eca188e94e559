package kms

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func mustCompile(t *testing.T, pattern string) *regexp.Regexp {
	t.Helper()
	re, err := regexp.Compile(pattern)
	if err != nil {
		t.Fatal(err)
	}
	return re
}

func TestBuildRequestBodyFilter(t *testing.T) {
	f := Filter{
		Tags:    []TagFilter{{Key: "env", Values: []string{"prod", "a&b"}}, {Key: "team"}},
		Matches: []Match{{Key: MatchResourceName, Value: "db-"}},
	}
	got, err := buildRequestBody(f, ActionFilter, 1000, 2000)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"action":"filter","limit":"1000","offset":"2000","tags":[{"key":"env","values":["prod","a&b"]},{"key":"team","values":[]}],"matches":[{"key":"resource_name","value":"db-"}]}`
	if string(got) != want {
		t.Errorf("body =\n%s\nwant\n%s", got, want)
	}
}

func TestBuildRequestBodyFirstPageAndCount(t *testing.T) {
	got, err := buildRequestBody(Filter{}, ActionFilter, 10, 0)
	if err != nil || string(got) != `{"action":"filter","limit":"10","offset":"0"}` {
		t.Errorf("first page: %s, %v", got, err)
	}
	got, err = buildRequestBody(Filter{Tags: []TagFilter{{Key: "k", Values: []string{"v"}}}}, ActionCount, 0, 0)
	if err != nil || string(got) != `{"action":"count","tags":[{"key":"k","values":["v"]}]}` {
		t.Errorf("count: %s, %v", got, err)
	}
}

// TestBuildRequestBodySeedExample rebuilds the vendor's request example and compares it as JSON.
func TestBuildRequestBodySeedExample(t *testing.T) {
	seed, err := os.ReadFile("testdata/seed_request.json")
	if err != nil {
		t.Fatal(err)
	}
	f := Filter{
		Tags:    []TagFilter{{Key: "key1", Values: []string{"value1", "value2"}}},
		Matches: []Match{{Key: MatchResourceName, Value: "resource1"}},
	}
	got, err := buildRequestBody(f, ActionFilter, 100, 100)
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	if err := json.Unmarshal(seed, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(got, &b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("body %s differs from the seed's example %s", got, seed)
	}
}

func TestBuildRequestBodyErrors(t *testing.T) {
	tests := []struct {
		f             Filter
		action        string
		limit, offset int
		want          string
	}{
		{Filter{}, ActionFilter, 0, 0, "limit must be between 1 and 1000, got 0"},
		{Filter{}, ActionFilter, 1001, 0, "limit must be between 1 and 1000, got 1001"},
		{Filter{}, ActionFilter, 10, -1, "offset must not be negative"},
		{Filter{}, "delete", 10, 0, `action must be "filter" or "count", got "delete"`},
		{Filter{Tags: []TagFilter{{Key: "*"}}}, ActionFilter, 10, 0, "tags[0].key: must not contain '*'"},
	}
	for _, tt := range tests {
		_, err := buildRequestBody(tt.f, tt.action, tt.limit, tt.offset)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s/%d/%d: err = %v, want %q", tt.action, tt.limit, tt.offset, err, tt.want)
		}
	}
	var verr *ValidationError
	if _, err := buildRequestBody(Filter{Tags: []TagFilter{{}}}, ActionFilter, 1, 0); !errors.As(err, &verr) {
		t.Errorf("invalid filter: err = %v, want *ValidationError", err)
	}
}
