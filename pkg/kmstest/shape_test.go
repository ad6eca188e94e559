package kmstest

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

var shapeKey = kms.Key{
	ID:                    "90c03e67-5534-4ed0-acfa-89780e47a535",
	Alias:                 "tagTest_xmdmi",
	Description:           "123",
	DomainID:              "4B688Fb77412Aee5570E7ecdbeB5afdc",
	Realm:                 "test",
	Spec:                  "AES_256",
	Usage:                 "ENCRYPT_DECRYPT",
	Origin:                "kms",
	Type:                  "1",
	State:                 kms.StateEnabled,
	EnterpriseProjectID:   "0",
	CreationDate:          time.UnixMilli(1521449277000),
	ScheduledDeletionDate: time.Unix(1700000000, 0),
}

// resourceOf fetches the one stored resource as generic JSON.
func resourceOf(t *testing.T, srv *Server) map[string]any {
	t.Helper()
	status, _, body := post(t, srv, `{"action":"filter"}`)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	var out struct {
		Resources  []map[string]any `json:"resources"`
		TotalCount any              `json:"total_count"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Resources) != 1 || out.TotalCount != float64(1) {
		t.Fatalf("want one resource and numeric total_count 1, got %s", body)
	}
	return out.Resources[0]
}

func TestShapes(t *testing.T) {
	srv := newTestServer(t, WithKeys(shapeKey))
	tests := []struct {
		shape      Shape
		wantDetail map[string]any
	}{
		{ShapeSchema, map[string]any{
			"key_id": shapeKey.ID, "key_alias": "tagTest_xmdmi", "domain_id": shapeKey.DomainID, "realm": "test",
			"key_spec": "AES_256", "key_usage": "ENCRYPT_DECRYPT", "key_description": "123",
			"creation_date": "1521449277", "scheduled_deletion_date": "1700000000", "expiration_time": "",
			"key_state": "2", "default_key_flag": "0", "key_type": "1", "key_rotation_enabled": "false",
			"origin": "kms", "sys_enterprise_project_id": "0",
		}},
		{ShapeExample, map[string]any{
			"key_id": shapeKey.ID, "key_alias": "tagTest_xmdmi", "domain_id": shapeKey.DomainID, "realm": "test",
			"key_spec": "AES_256", "key_usage": "ENCRYPT_DECRYPT", "key_description": "123",
			"creation_date": float64(1521449277000), "scheduled_deletion_date": float64(1700000000000), "expiration_time": "",
			"key_state": float64(2), "default_key_flag": float64(0), "key_type": float64(1), "key_rotation_enabled": false,
			"origin": "kms", "sys_enterprise_project_id": "0",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.shape.String(), func(t *testing.T) {
			srv.SetShape(tt.shape) // switched at run time on the same server
			res := resourceOf(t, srv)
			if res["resource_id"] != shapeKey.ID || res["resource_name"] != shapeKey.Alias {
				t.Errorf("resource_id/resource_name = %v/%v", res["resource_id"], res["resource_name"])
			}
			if tags, ok := res["tags"].([]any); !ok || len(tags) != 0 {
				t.Errorf("tags = %#v, want an empty array", res["tags"])
			}
			detail := res["resource_detail"]
			if tt.shape == ShapeExample {
				arr, ok := detail.([]any)
				if !ok || len(arr) != 1 {
					t.Fatalf("resource_detail = %#v, want an array of one object", detail)
				}
				detail = arr[0]
			}
			obj, ok := detail.(map[string]any)
			if !ok {
				t.Fatalf("resource_detail = %#v, want an object", detail)
			}
			for k, want := range tt.wantDetail {
				if obj[k] != want {
					t.Errorf("%s = %#v (%T), want %#v (%T)", k, obj[k], obj[k], want, want)
				}
			}
		})
	}
}

func TestShapeTagsAndFlags(t *testing.T) {
	k := shapeKey
	k.Default, k.RotationEnabled = true, true
	k.Tags = map[string]string{"b": "2", "a": "", "c": "3"}
	srv := newTestServer(t, WithKeys(k), WithShape(ShapeExample))
	res := resourceOf(t, srv)
	wantTags := []any{
		map[string]any{"key": "a", "value": ""},
		map[string]any{"key": "b", "value": "2"},
		map[string]any{"key": "c", "value": "3"},
	}
	if got, _ := json.Marshal(res["tags"]); string(got) != string(mustJSON(t, wantTags)) {
		t.Errorf("tags = %s, want sorted %s", got, mustJSON(t, wantTags))
	}
	detail := res["resource_detail"].([]any)[0].(map[string]any)
	if detail["default_key_flag"] != float64(1) || detail["key_rotation_enabled"] != true {
		t.Errorf("flags = %v %v", detail["default_key_flag"], detail["key_rotation_enabled"])
	}
	srv.SetShape(ShapeSchema)
	detail = resourceOf(t, srv)["resource_detail"].(map[string]any)
	if detail["default_key_flag"] != "1" || detail["key_rotation_enabled"] != "true" {
		t.Errorf("schema flags = %v %v", detail["default_key_flag"], detail["key_rotation_enabled"])
	}
}

func TestParseShape(t *testing.T) {
	for in, want := range map[string]Shape{"schema": ShapeSchema, "Example": ShapeExample} {
		if got, err := ParseShape(in); err != nil || got != want {
			t.Errorf("ParseShape(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseShape("xml"); err == nil {
		t.Error("ParseShape(xml): no error")
	}
	srv := New()
	srv.SetShape(Shape(7))
	if srv.Shape() != ShapeSchema {
		t.Errorf("invalid shape accepted: %v", srv.Shape())
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
