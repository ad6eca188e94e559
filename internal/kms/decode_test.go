package kms

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDecodeListResponseSeedExample(t *testing.T) {
	data, err := os.ReadFile("testdata/seed_response.json")
	if err != nil {
		t.Fatal(err)
	}
	keys, total, err := DecodeListResponse(data)
	if err != nil {
		t.Fatalf("decode seed example: %v", err)
	}
	if total != 1 {
		t.Errorf("total = %d, want 1", total)
	}
	want := []Key{{
		ID:                  "90c03e67-5534-4ed0-acfa-89780e47a535",
		Alias:               "tagTest_xmdmi",
		Description:         "123",
		DomainID:            "4B688Fb77412Aee5570E7ecdbeB5afdc",
		Realm:               "test",
		Origin:              "kms",
		Type:                "1",
		State:               StateEnabled,
		Default:             false,
		RotationEnabled:     false,
		EnterpriseProjectID: "0",
		CreationDate:        time.Date(2018, 3, 19, 8, 47, 57, 0, time.UTC),
		Tags:                map[string]string{"key": "testValue!", "haha": "testValue"},
	}}
	if !reflect.DeepEqual(keys, want) {
		t.Errorf("keys =\n%+v\nwant\n%+v", keys, want)
	}
}

func TestDecodeListResponseSchemaShape(t *testing.T) {
	body := `{"resources":[{"resource_id":"r1","resource_name":"alias-1","resource_detail":{
		"key_id":"k1","key_alias":"alias-1","key_spec":"AES_256","key_usage":"ENCRYPT_DECRYPT",
		"creation_date":"1521449277","scheduled_deletion_date":"1700000000",
		"key_state":"4","default_key_flag":"1","key_type":"1","expiration_time":"",
		"origin":"external","key_rotation_enabled":"true","sys_enterprise_project_id":"ep",
		"unknown_field":{"nested":[1,2,3]}},
		"tags":[]}],"total_count":"7","extra":true}`
	keys, total, err := DecodeListResponse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if total != 7 || len(keys) != 1 {
		t.Fatalf("total=%d len=%d", total, len(keys))
	}
	k := keys[0]
	if k.ID != "k1" || k.Spec != "AES_256" || k.Usage != "ENCRYPT_DECRYPT" || k.Origin != "external" ||
		k.State != StatePendingDeletion || !k.Default || !k.RotationEnabled || k.EnterpriseProjectID != "ep" {
		t.Errorf("unexpected key %+v", k)
	}
	if got := k.CreationDate; !got.Equal(time.Unix(1521449277, 0)) {
		t.Errorf("creation date %v", got)
	}
	if got := k.ScheduledDeletionDate; !got.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("deletion date %v", got)
	}
	if !k.ExpirationTime.IsZero() || k.Tags == nil || len(k.Tags) != 0 {
		t.Errorf("expiration %v tags %#v", k.ExpirationTime, k.Tags)
	}
}

func TestDecodeListResponseTolerance(t *testing.T) {
	tests := []struct {
		name  string
		body  string
		check func(t *testing.T, k Key)
	}{
		{"resource_id fallback and resource_name alias", `{"resources":[{"resource_id":"r1","resource_name":"n1"}],"total_count":1}`,
			func(t *testing.T, k Key) {
				if k.ID != "r1" || k.Alias != "n1" {
					t.Errorf("%+v", k)
				}
			}},
		{"detail null, tags null", `{"resources":[{"resource_id":"r1","resource_detail":null,"tags":null}],"total_count":1}`,
			func(t *testing.T, k Key) {
				if k.ID != "r1" || k.Tags == nil {
					t.Errorf("%+v", k)
				}
			}},
		{"detail empty array", `{"resources":[{"resource_id":"r1","resource_detail":[]}],"total_count":1}`,
			func(t *testing.T, k Key) {
				if k.ID != "r1" {
					t.Errorf("%+v", k)
				}
			}},
		{"millis as string", `{"resources":[{"resource_detail":{"key_id":"k","creation_date":"1521449277000"}}],"total_count":1}`,
			func(t *testing.T, k Key) {
				if !k.CreationDate.Equal(time.UnixMilli(1521449277000)) {
					t.Errorf("%v", k.CreationDate)
				}
			}},
		{"seconds as number", `{"resources":[{"resource_detail":{"key_id":"k","expiration_time":1521449277}}],"total_count":1}`,
			func(t *testing.T, k Key) {
				if !k.ExpirationTime.Equal(time.Unix(1521449277, 0)) {
					t.Errorf("%v", k.ExpirationTime)
				}
			}},
		{"numeric key id", `{"resources":[{"resource_detail":{"key_id":12345}}],"total_count":1}`,
			func(t *testing.T, k Key) {
				if k.ID != "12345" {
					t.Errorf("%q", k.ID)
				}
			}},
		{"unknown states", `{"resources":[{"resource_detail":{"key_id":"k","key_state":"9"}}],"total_count":1}`,
			func(t *testing.T, k Key) {
				if k.State != StateUnknown {
					t.Errorf("%v", k.State)
				}
			}},
		{"boolean flags as numbers", `{"resources":[{"resource_detail":{"key_id":"k","default_key_flag":1,"key_rotation_enabled":0}}],"total_count":1}`,
			func(t *testing.T, k Key) {
				if !k.Default || k.RotationEnabled {
					t.Errorf("%+v", k)
				}
			}},
		{"tag value as number", `{"resources":[{"resource_id":"k","tags":[{"key":"n","value":3},{"key":"b","value":true}]}],"total_count":1}`,
			func(t *testing.T, k Key) {
				if k.Tags["n"] != "3" || k.Tags["b"] != "true" {
					t.Errorf("%v", k.Tags)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys, _, err := DecodeListResponse([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != 1 {
				t.Fatalf("got %d keys", len(keys))
			}
			tt.check(t, keys[0])
		})
	}
}

func TestParseState(t *testing.T) {
	for in, want := range map[string]State{"1": 1, "2": 2, "3": 3, "4": 4, "5": 5, " 2 ": 2,
		"0": StateUnknown, "6": StateUnknown, "": StateUnknown, "true": StateUnknown, "2.5": StateUnknown} {
		if got := parseState(in); got != want {
			t.Errorf("parseState(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestDecodeListResponseTotalCount(t *testing.T) {
	for body, want := range map[string]int{
		`{"total_count":0}`:                  0,
		`{"total_count":"2500"}`:             2500,
		`{"resources":null,"total_count":3}`: 3,
	} {
		keys, total, err := DecodeListResponse([]byte(body))
		if err != nil || total != want || len(keys) != 0 {
			t.Errorf("%s: total=%d keys=%d err=%v", body, total, len(keys), err)
		}
	}
}

func TestDecodeListResponseErrors(t *testing.T) {
	tests := []struct {
		body, wantSubstr string
		syntax           bool
	}{
		{`{"resources":[`, "not valid JSON", true},
		{`<html>bad gateway</html>`, "not valid JSON", true},
		{`[1,2]`, "not a JSON object", false},
		{`{"resources":[]}`, "total_count: missing", false},
		{`{"resources":[],"total_count":-1}`, "total_count: not a non-negative integer", false},
		{`{"resources":[],"total_count":"abc"}`, "total_count: not a non-negative integer", false},
		{`{"resources":[],"total_count":{}}`, "total_count: expected a string", false},
		{`{"resources":[{"resource_name":"x"}],"total_count":1}`, "resources[0]: missing key id", false},
		{`{"resources":[{"resource_id":"a"},{"resource_detail":{"key_alias":"x"}}],"total_count":2}`, "resources[1]: missing key id", false},
		{`{"resources":[null],"total_count":1}`, "resources[0]: missing key id", false},
		{`{"resources":[1],"total_count":1}`, "cannot unmarshal number", false},
		{`{"resources":{},"total_count":1}`, "decode response", false},
		{`{"resources":[{"resource_detail":[{"key_id":"a"},{"key_id":"b"}]}],"total_count":1}`, "array of 2 objects", false},
		{`{"resources":[{"resource_detail":"k"}],"total_count":1}`, "resource_detail: expected an object", false},
		{`{"resources":[{"resource_detail":{"key_id":["a"]}}],"total_count":1}`, "resource_detail.key_id: expected a string", false},
		{`{"resources":[{"resource_detail":{"key_id":"a","creation_date":"yesterday"}}],"total_count":1}`, "creation_date: not an epoch timestamp", false},
		{`{"resources":[{"resource_detail":{"key_id":"a","creation_date":-5}}],"total_count":1}`, "creation_date: epoch timestamp out of range", false},
		{`{"resources":[{"resource_detail":{"key_id":"a","default_key_flag":"maybe"}}],"total_count":1}`, "default_key_flag: not a boolean", false},
		{`{"resources":[{"resource_id":"a","tags":{"k":"v"}}],"total_count":1}`, "tags: expected an array", false},
	}
	for _, tt := range tests {
		_, _, err := DecodeListResponse([]byte(tt.body))
		var de *DecodeError
		if !errors.As(err, &de) {
			t.Errorf("%s: err = %v, want *DecodeError", tt.body, err)
			continue
		}
		if !strings.Contains(err.Error(), tt.wantSubstr) {
			t.Errorf("%s: err = %q, want substring %q", tt.body, err, tt.wantSubstr)
		}
		if de.Retryable() != tt.syntax {
			t.Errorf("%s: retryable = %v, want %v", tt.body, de.Retryable(), tt.syntax)
		}
	}
}

func TestParseDate(t *testing.T) {
	tests := []struct {
		in   string
		want time.Time
	}{
		{"", time.Time{}},
		{"0", time.Time{}},
		{"100000000001", time.UnixMilli(100000000001)}, // just above the threshold: milliseconds
		{"100000000000", time.Unix(100000000000, 0)},   // the threshold itself: seconds
		{"99999999999", time.Unix(99999999999, 0)},     // just below: seconds
		{"1521449277.5", time.Unix(1521449277, 5e8)},
		{"2018-03-19T08:47:57Z", time.Date(2018, 3, 19, 8, 47, 57, 0, time.UTC)},
	}
	for _, tt := range tests {
		got, err := parseDate(tt.in)
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("parseDate(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"NaN", "Inf", "1e300", "-1", "abc"} {
		if _, err := parseDate(in); err == nil {
			t.Errorf("parseDate(%q): want error", in)
		}
	}
}

func TestDecodeCountResponse(t *testing.T) {
	if n, err := decodeCountResponse([]byte(`{"total_count":"42"}`)); err != nil || n != 42 {
		t.Errorf("got %d, %v", n, err)
	}
	if _, err := decodeCountResponse([]byte(`{}`)); err == nil {
		t.Error("want error for a missing total_count")
	}
}
