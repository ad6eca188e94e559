package kmstest

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// admin sends an admin request and returns the status and body.
func admin(t *testing.T, srv *Server, method, path, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	status, _, b := do(t, srv.Client(), req)
	return status, b
}

func adminOK(t *testing.T, srv *Server, method, path, body string, want int, out any) {
	t.Helper()
	status, b := admin(t, srv, method, path, body)
	if status != want {
		t.Fatalf("%s %s: %d %s; want %d", method, path, status, b, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

func TestAdminKeys(t *testing.T) {
	srv := newSampleServer(t)
	const id = "0b6f6a0e-3a52-4c1e-9a40-1f2d3c4b5a01"

	var records []KeyRecord
	adminOK(t, srv, http.MethodGet, "/admin/keys", "", 200, &records)
	if len(records) != 8 || records[0].ID != id || records[0].Alias != "payments-db" || *records[0].State != KeyState(kms.StateEnabled) {
		t.Fatalf("GET /admin/keys = %+v", records)
	}

	adminOK(t, srv, http.MethodPost, "/admin/keys", `{"id":"ffff0000-0000-4000-8000-000000000001","alias":"new-key","state":3,"tags":{"env":"prod"}}`, 200, nil)
	k, ok := srv.Key("ffff0000-0000-4000-8000-000000000001")
	if !ok || k.State != kms.StateDisabled || k.Spec != DefaultSpec || k.Tags["env"] != "prod" {
		t.Fatalf("posted key = %+v, %v", k, ok)
	}
	adminOK(t, srv, http.MethodPost, "/admin/keys", `[{"id":"a1"},{"id":"a2","state":"pendingdeletion"}]`, 200, nil)
	if k, _ := srv.Key("a2"); srv.KeyCount() != 11 || k.State != kms.StatePendingDeletion {
		t.Fatalf("after posting an array: %d keys, a2 = %+v", srv.KeyCount(), k)
	}

	var rec KeyRecord
	adminOK(t, srv, http.MethodPatch, "/admin/keys/"+id, `{"state":"Disabled","tags":{"env":"dev"},"alias":"payments-db-old"}`, 200, &rec)
	if k, _ := srv.Key(id); k.State != kms.StateDisabled || k.Alias != "payments-db-old" || len(k.Tags) != 1 || k.Tags["env"] != "dev" {
		t.Errorf("patched key = %+v", k)
	}
	if rec.Alias != "payments-db-old" {
		t.Errorf("PATCH answer = %+v", rec)
	}
	adminOK(t, srv, http.MethodPatch, "/admin/keys/"+id, `{"state":4}`, 200, nil)
	if k, _ := srv.Key(id); k.State != kms.StatePendingDeletion || k.Alias != "payments-db-old" {
		t.Errorf("state by number: %+v", k)
	}
	adminOK(t, srv, http.MethodGet, "/admin/keys/"+id, "", 200, &rec)
	if rec.ID != id || *rec.State != KeyState(kms.StatePendingDeletion) {
		t.Errorf("GET one key = %+v", rec)
	}

	for _, tt := range []struct{ method, path, body string }{
		{http.MethodPatch, "/admin/keys/" + id, `{"state":"Broken"}`},
		{http.MethodPatch, "/admin/keys/" + id, `{"colour":"red"}`},
		{http.MethodPost, "/admin/keys", `{"alias":"no id"}`},
		{http.MethodPost, "/admin/keys", `[{"id":"x"},{"id":"x"}]`},
		{http.MethodPut, "/admin/keys", `{"id":"not-an-array"}`},
	} {
		if status, b := admin(t, srv, tt.method, tt.path, tt.body); status != http.StatusBadRequest || !strings.Contains(string(b), `"error"`) {
			t.Errorf("%s %s %s: %d %s; want 400", tt.method, tt.path, tt.body, status, b)
		}
	}
	if status, _ := admin(t, srv, http.MethodPatch, "/admin/keys/nope", `{"state":2}`); status != http.StatusNotFound {
		t.Errorf("PATCH unknown key: %d", status)
	}

	adminOK(t, srv, http.MethodDelete, "/admin/keys/"+id, "", http.StatusNoContent, nil)
	if _, ok := srv.Key(id); ok {
		t.Error("deleted key still stored")
	}
	if status, _ := admin(t, srv, http.MethodDelete, "/admin/keys/"+id, ""); status != http.StatusNotFound {
		t.Errorf("second DELETE: %d, want 404", status)
	}

	adminOK(t, srv, http.MethodPut, "/admin/keys", `[{"id":"only"}]`, 200, nil)
	if keys := srv.Keys(); len(keys) != 1 || keys[0].ID != "only" {
		t.Errorf("after PUT: %+v", keys)
	}
	adminOK(t, srv, http.MethodDelete, "/admin/keys", "", http.StatusNoContent, nil)
	if srv.KeyCount() != 0 {
		t.Errorf("after DELETE all: %d keys", srv.KeyCount())
	}
	if status, _ := admin(t, srv, http.MethodGet, "/admin/nothing", ""); status != http.StatusNotFound {
		t.Errorf("unknown route: %d", status)
	}
}

func TestAdminRoundTrip(t *testing.T) {
	src := newSampleServer(t)
	dst := newTestServer(t)
	_, keys := admin(t, src, http.MethodGet, "/admin/keys", "")
	adminOK(t, dst, http.MethodPut, "/admin/keys", string(keys), 200, nil)
	a, b := src.Keys(), dst.Keys()
	if len(a) != len(b) {
		t.Fatalf("%d keys copied, want %d", len(b), len(a))
	}
	for i := range a {
		if a[i].ID != b[i].ID || a[i].State != b[i].State || !a[i].CreationDate.Equal(b[i].CreationDate) ||
			!a[i].ScheduledDeletionDate.Equal(b[i].ScheduledDeletionDate) || a[i].Default != b[i].Default ||
			len(a[i].Tags) != len(b[i].Tags) || a[i].Origin != b[i].Origin {
			t.Errorf("key %d differs:\n%+v\n%+v", i, a[i], b[i])
		}
	}
}

func TestAdminFaultsStatsShapeTokens(t *testing.T) {
	srv := newSampleServer(t)

	var pending []Fault
	adminOK(t, srv, http.MethodPost, "/admin/faults", `[{"kind":"throttle","retry_after":3,"times":1},{"kind":"latency","delay":"1ms"}]`, 200, &pending)
	if len(pending) != 2 || pending[0].RetryAfter != 3 || pending[1].Delay.Milliseconds() != 1 {
		t.Fatalf("pending = %+v", pending)
	}
	if status, _, _ := post(t, srv, page0); status != http.StatusTooManyRequests {
		t.Errorf("after POST /admin/faults: %d, want 429", status)
	}
	adminOK(t, srv, http.MethodGet, "/admin/faults", "", 200, &pending)
	if len(pending) != 1 || pending[0].Kind != FaultLatency {
		t.Errorf("GET /admin/faults = %+v", pending)
	}
	adminOK(t, srv, http.MethodDelete, "/admin/faults", "", http.StatusNoContent, nil)
	if len(srv.Faults()) != 0 {
		t.Error("faults not cleared")
	}
	if status, _ := admin(t, srv, http.MethodPost, "/admin/faults", `{"kind":"kms_error"}`); status != http.StatusBadRequest {
		t.Errorf("invalid fault: %d", status)
	}

	post(t, srv, page0)
	post(t, srv, countBody)
	var st Stats
	adminOK(t, srv, http.MethodGet, "/admin/stats", "", 200, &st)
	if st.Total != 3 || st.ByAction[ActionFilter] != 2 || st.ByAction[ActionCount] != 1 || st.ByStatus[429] != 1 || st.ByStatus[200] != 2 || st.FaultsApplied != 1 {
		t.Errorf("stats = %+v", st)
	}
	var recs []RequestRecord
	adminOK(t, srv, http.MethodGet, "/admin/requests", "", 200, &recs)
	if len(recs) != 3 || recs[2].Action != ActionCount || recs[0].Fault != FaultThrottle {
		t.Errorf("requests = %+v", recs)
	}
	adminOK(t, srv, http.MethodPost, "/admin/reset-stats", "", http.StatusNoContent, nil)
	if st := srv.Stats(); st.Total != 0 || len(st.ByStatus) != 0 || len(srv.Requests()) != 0 {
		t.Errorf("after reset: %+v", st)
	}

	var shape shapeBody
	adminOK(t, srv, http.MethodPut, "/admin/shape", `{"shape":"example"}`, 200, &shape)
	if shape.Shape != "example" || srv.Shape() != ShapeExample {
		t.Errorf("shape = %v", srv.Shape())
	}
	adminOK(t, srv, http.MethodGet, "/admin/shape", "", 200, &shape)
	if shape.Shape != "example" {
		t.Errorf("GET shape = %q", shape.Shape)
	}
	if status, _ := admin(t, srv, http.MethodPut, "/admin/shape", `{"shape":"yaml"}`); status != http.StatusBadRequest {
		t.Errorf("bad shape: %d", status)
	}

	adminOK(t, srv, http.MethodPost, "/admin/tokens", `{"token":"demo-token"}`, http.StatusNoContent, nil)
	req := tokenRequest(t, srv, countBody)
	req.Header.Set(HeaderAuthToken, "demo-token")
	status, _, body := do(t, srv.Client(), req)
	checkAnswer(t, status, body, "")
	adminOK(t, srv, http.MethodPost, "/admin/tokens", `{"token":"demo-token","expired":true}`, http.StatusNoContent, nil)
	req = tokenRequest(t, srv, countBody)
	req.Header.Set(HeaderAuthToken, "demo-token")
	status, _, body = do(t, srv.Client(), req)
	checkAnswer(t, status, body, CodeTokenExpired)
}
