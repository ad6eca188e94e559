package kmstest

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

func TestValidation(t *testing.T) {
	srv := newSampleServer(t)
	long := func(n int) string { return strings.Repeat("é", n) } // multi-byte: limits count characters
	tags := func(tagsJSON string) string { return `{"action":"filter","tags":` + tagsJSON + `}` }
	match := func(key, value string) string {
		return fmt.Sprintf(`{"action":"filter","matches":[{"key":%q,"value":%q}]}`, key, value)
	}
	var elevenKeys []string
	for i := range 11 {
		elevenKeys = append(elevenKeys, fmt.Sprintf(`{"key":"k%d","values":[]}`, i))
	}
	var tenKeys = strings.Join(elevenKeys[:10], ",")

	tests := []struct {
		name  string
		body  string
		code  string // "" = 200
		field string // substring the message must contain
	}{
		{"invalid JSON", `{"action":`, CodeInvalidJSON, ""},
		{"trailing data", `{"action":"filter"} x`, CodeInvalidJSON, ""},
		{"array body", `[]`, CodeInvalidJSON, ""},
		{"empty body", ``, CodeMissingParameter, "body"},
		{"missing action", `{"limit":"10"}`, CodeMissingParameter, `"action"`},
		{"unknown action", `{"action":"list"}`, CodeInvalidParameter, `"action"`},
		{"action not a string", `{"action":1}`, CodeInvalidParameter, `"action"`},
		{"limit as a number", `{"action":"filter","limit":10}`, CodeInvalidParameter, `"limit"`},
		{"limit zero", `{"action":"filter","limit":"0"}`, CodeInvalidParameter, `"limit"`},
		{"limit 1001", `{"action":"filter","limit":"1001"}`, CodeInvalidParameter, `"limit"`},
		{"limit not numeric", `{"action":"filter","limit":"ten"}`, CodeInvalidParameter, `"limit"`},
		{"limit empty", `{"action":"filter","limit":""}`, CodeInvalidParameter, `"limit"`},
		{"limit negative", `{"action":"filter","limit":"-1"}`, CodeInvalidParameter, `"limit"`},
		{"limit 1", `{"action":"filter","limit":"1"}`, "", ""},
		{"limit 1000", `{"action":"filter","limit":"1000"}`, "", ""},
		{"offset as a number", `{"action":"filter","offset":0}`, CodeInvalidParameter, `"offset"`},
		{"offset negative", `{"action":"filter","offset":"-1"}`, CodeInvalidParameter, `"offset"`},
		{"offset not numeric", `{"action":"filter","offset":"1e3"}`, CodeInvalidParameter, `"offset"`},
		{"offset huge", `{"action":"filter","offset":"99999999999"}`, CodeInvalidParameter, `"offset"`},
		{"count ignores limit", `{"action":"count","limit":"0"}`, "", ""},
		{"tags not an array", `{"action":"filter","tags":{}}`, CodeInvalidParameter, `"tags"`},
		{"tag key missing", tags(`[{"values":["a"]}]`), CodeMissingParameter, `"tags[0].key"`},
		{"tag key empty", tags(`[{"key":"","values":["a"]}]`), CodeInvalidParameter, `"tags[0].key"`},
		{"tag key 36 chars", tags(`[{"key":"` + long(36) + `"}]`), "", ""},
		{"tag key 37 chars", tags(`[{"key":"` + long(37) + `"}]`), CodeInvalidParameter, `"tags[0].key"`},
		{"tag value 43 chars", tags(`[{"key":"k","values":["` + long(43) + `"]}]`), "", ""},
		{"tag value 44 chars", tags(`[{"key":"k","values":["` + long(44) + `"]}]`), CodeInvalidParameter, `"tags[0].values[0]"`},
		{"tag value empty is allowed", tags(`[{"key":"k","values":[""]}]`), "", ""},
		{"tag value not a string", tags(`[{"key":"k","values":[1]}]`), CodeInvalidParameter, `"tags.values"`},
		{"tag key control char", tags(`[{"key":"a\u0001b"}]`), CodeInvalidParameter, `"tags[0].key"`},
		{"tag key tab", tags(`[{"key":"a\tb"}]`), CodeInvalidParameter, `"tags[0].key"`},
		{"tag value newline", tags(`[{"key":"k","values":["a\nb"]}]`), CodeInvalidParameter, `"tags[0].values[0]"`},
		{"tag key star", tags(`[{"key":"a*"}]`), CodeInvalidParameter, `"tags[0].key"`},
		{"tag key less than", tags(`[{"key":"a<"}]`), CodeInvalidParameter, `"tags[0].key"`},
		{"tag key greater than", tags(`[{"key":"a>"}]`), CodeInvalidParameter, `"tags[0].key"`},
		{"tag key backslash", tags(`[{"key":"a\\"}]`), CodeInvalidParameter, `"tags[0].key"`},
		{"tag value equals", tags(`[{"key":"k","values":["a=b"]}]`), CodeInvalidParameter, `"tags[0].values[0]"`},
		{"tag key space and dash allowed", tags(`[{"key":"cost center-1","values":["a b_c.d:e/f@g"]}]`), "", ""},
		{"duplicate keys", tags(`[{"key":"env"},{"key":"env"}]`), CodeInvalidParameter, `"tags[1].key"`},
		{"duplicate values", tags(`[{"key":"env","values":["prod","staging","prod"]}]`), CodeInvalidParameter, `"tags[0].values[2]"`},
		{"10 keys", tags(`[` + tenKeys + `]`), "", ""},
		{"11 keys", tags(`[` + strings.Join(elevenKeys, ",") + `]`), CodeInvalidParameter, `"tags"`},
		{"match key missing", `{"action":"filter","matches":[{"value":"x"}]}`, CodeMissingParameter, `"matches[0].key"`},
		{"match value missing", `{"action":"filter","matches":[{"key":"resource_name"}]}`, CodeMissingParameter, `"matches[0].value"`},
		{"match unknown key", match("key_alias", "x"), CodeInvalidParameter, `"matches[0].key"`},
		{"match value empty", match("resource_name", ""), CodeInvalidParameter, `"matches[0].value"`},
		{"match value 255 chars", match("resource_name", long(255)), "", ""},
		{"match value 256 chars", match("resource_name", long(256)), CodeInvalidParameter, `"matches[0].value"`},
		{"sequence 36 bytes", `{"action":"filter","sequence":"919c82d4-8046-4722-9094-35c3c6524cff"}`, "", ""},
		{"sequence 35 bytes", `{"action":"filter","sequence":"919c82d4-8046-4722-9094-35c3c6524cf"}`, CodeInvalidParameter, `"sequence"`},
		{"sequence empty", `{"action":"filter","sequence":""}`, CodeInvalidParameter, `"sequence"`},
		{"unknown fields are ignored", `{"action":"filter","extra":{"a":1}}`, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, hdr, body := post(t, srv, tt.body)
			if tt.code == "" {
				if status != http.StatusOK {
					t.Fatalf("status %d, body %s; want 200", status, body)
				}
				return
			}
			if status != http.StatusBadRequest {
				t.Fatalf("status %d, body %s; want 400", status, body)
			}
			if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q", ct)
			}
			e := errorOf(t, body)
			if e.Code != tt.code || !strings.Contains(e.Message, tt.field) {
				t.Errorf("error %s %q; want %s naming %s", e.Code, e.Message, tt.code, tt.field)
			}
		})
	}
}

func TestRouting(t *testing.T) {
	srv := newSampleServer(t)
	tests := []struct {
		name   string
		method string
		path   string
		body   string
		status int
		code   string
	}{
		{"wrong path", http.MethodPost, "/v1.0/" + srv.ProjectID() + "/kms/keys", `{}`, http.StatusNotFound, CodeInvalidURL},
		{"wrong version", http.MethodPost, "/v2/" + srv.ProjectID() + "/kms/resource_instances/action", `{}`, http.StatusNotFound, CodeInvalidURL},
		{"GET", http.MethodGet, srv.ActionPath(), ``, http.StatusMethodNotAllowed, CodeInvalidURL},
		{"other project", http.MethodPost, "/v1.0/someoneelse/kms/resource_instances/action", `{"action":"count"}`, http.StatusForbidden, CodeProjectMismatch},
		{"body too long", http.MethodPost, srv.ActionPath(), `{"action":"filter","x":"` + strings.Repeat("a", MaxBodyBytes) + `"}`, http.StatusBadRequest, CodeMessageTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := tokenRequest(t, srv, tt.body)
			req.Method = tt.method
			req.URL.Path = tt.path
			status, _, body := do(t, srv.Client(), req)
			if status != tt.status {
				t.Fatalf("status %d, body %.200s; want %d", status, body, tt.status)
			}
			if e := errorOf(t, body); e.Code != tt.code {
				t.Errorf("code %s, want %s", e.Code, tt.code)
			}
		})
	}
}
