package kmstest

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// chanHandler hands every log record to a channel, so tests can wait for a request to finish.
type chanHandler struct{ ch chan slog.Record }

func (h chanHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h chanHandler) Handle(_ context.Context, r slog.Record) error {
	h.ch <- r.Clone()
	return nil
}
func (h chanHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h chanHandler) WithGroup(string) slog.Handler      { return h }

func attrs(r slog.Record) map[string]string {
	m := map[string]string{}
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.String()
		return true
	})
	return m
}

func inject(t *testing.T, srv *Server, f Fault) {
	t.Helper()
	if err := srv.InjectFault(f); err != nil {
		t.Fatal(err)
	}
}

const page0 = `{"action":"filter","limit":"10","offset":"0"}`

func TestGatewayFaults(t *testing.T) {
	tests := []struct {
		name        string
		fault       Fault
		status      int
		contentType string
		check       func(t *testing.T, h http.Header, body []byte)
	}{
		{"throttle with Retry-After", Fault{Kind: FaultThrottle, RetryAfter: 7, Times: 1}, 429, "application/json",
			func(t *testing.T, h http.Header, _ []byte) {
				if h.Get("Retry-After") != "7" {
					t.Errorf("Retry-After = %q, want 7", h.Get("Retry-After"))
				}
			}},
		{"throttle without Retry-After", Fault{Kind: FaultThrottle, Times: 1}, 429, "application/json",
			func(t *testing.T, h http.Header, _ []byte) {
				if _, ok := h["Retry-After"]; ok {
					t.Errorf("Retry-After = %q, want none", h.Get("Retry-After"))
				}
			}},
		{"500", Fault{Kind: FaultServerError, Status: 500, Times: 1}, 500, "text/html", htmlBody("500 Internal Server Error")},
		{"502", Fault{Kind: FaultServerError, Status: 502, Times: 1}, 502, "text/html", htmlBody("502 Bad Gateway")},
		{"503 by default", Fault{Kind: FaultServerError, Times: 1}, 503, "text/html", htmlBody("503 Service Unavailable")},
		{"KMS.0303 gets 403", Fault{Kind: FaultKMSError, Code: CodeTokenExpired, Times: 1}, 403, "application/json", kmsCode(CodeTokenExpired)},
		{"KMS.0202 with 400", Fault{Kind: FaultKMSError, Code: CodeInvalidJSON, Status: 400, Message: "boom", Times: 1}, 400, "application/json",
			func(t *testing.T, h http.Header, body []byte) {
				kmsCode(CodeInvalidJSON)(t, h, body)
				if errorOf(t, body).Message != "boom" {
					t.Errorf("message: %s", body)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newSampleServer(t)
			inject(t, srv, tt.fault)
			status, h, body := post(t, srv, page0)
			if status != tt.status || !strings.HasPrefix(h.Get("Content-Type"), tt.contentType) {
				t.Fatalf("got %d %q %s; want %d %s", status, h.Get("Content-Type"), body, tt.status, tt.contentType)
			}
			tt.check(t, h, body)
			if status, _, body := post(t, srv, page0); status != http.StatusOK {
				t.Errorf("after the fault: %d %s; want 200", status, body)
			}
			if st := srv.Stats(); st.FaultsApplied != 1 || st.ByStatus[tt.status] != 1 || st.ByStatus[200] != 1 {
				t.Errorf("stats = %+v", st)
			}
		})
	}
}

func htmlBody(title string) func(*testing.T, http.Header, []byte) {
	return func(t *testing.T, _ http.Header, body []byte) {
		if !strings.Contains(string(body), "<title>"+title+"</title>") || json.Valid(body) {
			t.Errorf("body %q, want an HTML page titled %q", body, title)
		}
	}
}

func kmsCode(code string) func(*testing.T, http.Header, []byte) {
	return func(t *testing.T, _ http.Header, body []byte) {
		if e := errorOf(t, body); e.Code != code {
			t.Errorf("code %s, want %s", e.Code, code)
		}
	}
}

func TestGatewayFaultPrecedesAuth(t *testing.T) {
	srv := newSampleServer(t)
	inject(t, srv, Fault{Kind: FaultThrottle, Times: 1})
	req := tokenRequest(t, srv, page0)
	req.Header.Del(HeaderAuthToken)
	if status, _, body := do(t, srv.Client(), req); status != http.StatusTooManyRequests {
		t.Errorf("got %d %s, want 429", status, body)
	}
}

func TestDropFault(t *testing.T) {
	logs := make(chan slog.Record, 16)
	srv := newSampleServer(t, WithLogger(slog.New(chanHandler{logs})))
	inject(t, srv, Fault{Kind: FaultDrop, Times: 1})
	resp, err := srv.Client().Do(tokenRequest(t, srv, page0))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("got status %d, want a connection error", resp.StatusCode)
	}
	if a := attrs(<-logs); a["status"] != "0" || a["fault"] != string(FaultDrop) {
		t.Errorf("log = %v, want status 0 and fault drop", a)
	}
	if status, _, _ := post(t, srv, page0); status != http.StatusOK {
		t.Errorf("after the drop: %d", status)
	}
	<-logs
	if st := srv.Stats(); st.ByStatus[0] != 1 || st.ByStatus[200] != 1 || st.Total != 2 {
		t.Errorf("stats = %+v, want one unanswered request", st)
	}
}

func TestLatencyFault(t *testing.T) {
	logs := make(chan slog.Record, 16)
	srv := newSampleServer(t, WithLogger(slog.New(chanHandler{logs})))

	const delay = 30 * time.Millisecond
	inject(t, srv, Fault{Kind: FaultLatency, Delay: delay, Times: 1})
	start := time.Now()
	if status, _, body := post(t, srv, page0); status != http.StatusOK || !json.Valid(body) {
		t.Fatalf("delayed request: %d %s", status, body)
	}
	if elapsed := time.Since(start); elapsed < delay {
		t.Errorf("answered after %v, want at least %v", elapsed, delay)
	}
	<-logs

	// A client that gives up ends the wait: the handler returns without answering.
	inject(t, srv, Fault{Kind: FaultLatency, Delay: time.Hour, Times: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	resp, err := srv.Client().Do(tokenRequest(t, srv, page0).WithContext(ctx))
	if err == nil {
		resp.Body.Close()
		t.Fatal("want a timeout")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline", err)
	}
	select {
	case rec := <-logs:
		if a := attrs(rec); a["status"] != "0" || a["fault"] != string(FaultLatency) {
			t.Errorf("log = %v, want status 0 and fault latency", a)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler did not return after the client gave up")
	}
}

func TestResponseFaults(t *testing.T) {
	srv := newTestServer(t, WithKeys(GenerateKeys(25, nil)...))
	ids := make([]string, 0, 25)
	for _, k := range srv.Keys() {
		ids = append(ids, k.ID)
	}
	page := func(offset int) listResponse {
		return list(t, srv, `{"action":"filter","limit":"10","offset":"`+strconv.Itoa(offset)+`"}`)
	}

	t.Run("total_count drifts after the first page", func(t *testing.T) {
		inject(t, srv, Fault{Kind: FaultTotalDrift, Delta: 3, Times: 1})
		if l := page(0); *l.TotalCount != 25 {
			t.Errorf("first page total %d, want 25 (the fault waits for offset > 0)", *l.TotalCount)
		}
		if l := page(10); *l.TotalCount != 28 || !slices.Equal(l.ids(), ids[10:20]) {
			t.Errorf("second page total %d, want 28", *l.TotalCount)
		}
		if l := page(20); *l.TotalCount != 25 {
			t.Errorf("third page total %d, want 25 again", *l.TotalCount)
		}
	})
	t.Run("total_count shrinks", func(t *testing.T) {
		inject(t, srv, Fault{Kind: FaultTotalDrift, Delta: -30, Times: 1})
		if l := page(10); *l.TotalCount != 0 {
			t.Errorf("total %d, want 0 (clamped)", *l.TotalCount)
		}
	})
	t.Run("duplicate across pages", func(t *testing.T) {
		inject(t, srv, Fault{Kind: FaultDuplicate})
		defer srv.ClearFaults()
		got, calls := listAll(t, srv, 10, "")
		if calls != 3 || len(got) != 26 {
			t.Fatalf("%d calls, %d ids; want 3 calls, 26 ids", calls, len(got))
		}
		if got[9] != got[10] {
			t.Errorf("want the last id of page 1 repeated first on page 2")
		}
		if uniq := slices.Compact(slices.Clone(got)); !slices.Equal(uniq, ids) {
			t.Errorf("de-duplicated listing differs from the store")
		}
	})
	t.Run("empty page with a total", func(t *testing.T) {
		inject(t, srv, Fault{Kind: FaultEmptyPage, Times: 1})
		if l := page(0); len(l.Resources) != 0 || *l.TotalCount != 25 {
			t.Errorf("%d resources, total %d; want 0, 25", len(l.Resources), *l.TotalCount)
		}
	})
	t.Run("malformed JSON", func(t *testing.T) {
		inject(t, srv, Fault{Kind: FaultMalformedJSON, Times: 1})
		status, _, body := post(t, srv, page0)
		if status != http.StatusOK || json.Valid(body) {
			t.Errorf("got %d %s, want 200 with invalid JSON", status, body)
		}
	})
	t.Run("truncated JSON", func(t *testing.T) {
		_, _, full := post(t, srv, page0)
		inject(t, srv, Fault{Kind: FaultTruncatedJSON, Times: 1})
		status, h, body := post(t, srv, page0)
		if status != http.StatusOK || json.Valid(body) || len(body) != len(full)/2 || !strings.HasPrefix(string(full), string(body)) {
			t.Errorf("got %d, %d bytes; want 200 with the first %d bytes", status, len(body), len(full)/2)
		}
		if h.Get("Content-Length") != strconv.Itoa(len(body)) {
			t.Errorf("Content-Length %s, body %d", h.Get("Content-Length"), len(body))
		}
	})
	t.Run("count action is faulted too", func(t *testing.T) {
		inject(t, srv, Fault{Kind: FaultMalformedJSON, Action: ActionCount, Times: 1})
		if l := page(0); *l.TotalCount != 25 {
			t.Error("filter request faulted by a count fault")
		}
		if _, _, body := post(t, srv, countBody); json.Valid(body) {
			t.Errorf("count answer %s, want malformed", body)
		}
	})
	t.Run("invalid requests do not use up response faults", func(t *testing.T) {
		inject(t, srv, Fault{Kind: FaultEmptyPage, Times: 1})
		if status, _, _ := post(t, srv, `{"action":"filter","limit":"0"}`); status != http.StatusBadRequest {
			t.Fatalf("status %d", status)
		}
		if l := page(0); len(l.Resources) != 0 {
			t.Error("the fault was used up by an invalid request")
		}
	})
}

func TestFaultMatching(t *testing.T) {
	srv := newSampleServer(t)
	statuses := func(n int, body string) []int {
		var got []int
		for range n {
			status, _, _ := post(t, srv, body)
			got = append(got, status)
		}
		return got
	}
	inject(t, srv, Fault{Kind: FaultServerError, Action: ActionCount, Skip: 1, Times: 2})
	if got := statuses(2, page0); !slices.Equal(got, []int{200, 200}) {
		t.Errorf("filter requests: %v, want untouched", got)
	}
	if got := statuses(4, countBody); !slices.Equal(got, []int{200, 503, 503, 200}) {
		t.Errorf("count requests: %v, want skip 1 then 2 faults", got)
	}
	if len(srv.Faults()) != 0 {
		t.Errorf("used-up fault still pending: %+v", srv.Faults())
	}

	inject(t, srv, Fault{Kind: FaultThrottle}) // until cleared
	if got := statuses(3, page0); !slices.Equal(got, []int{429, 429, 429}) {
		t.Errorf("until cleared: %v", got)
	}
	if f := srv.Faults(); len(f) != 1 || f[0].Kind != FaultThrottle {
		t.Errorf("pending = %+v", f)
	}
	srv.ClearFaults()
	if got := statuses(1, page0); got[0] != 200 {
		t.Errorf("after clear: %v", got)
	}

	inject(t, srv, Fault{Kind: FaultServerError, Times: 1})
	inject(t, srv, Fault{Kind: FaultThrottle, Times: 1})
	if got := statuses(3, page0); !slices.Equal(got, []int{503, 429, 200}) {
		t.Errorf("queued faults: %v, want in order", got)
	}
}

func TestInvalidFaults(t *testing.T) {
	srv := New()
	for _, f := range []Fault{
		{Kind: "explode"},
		{Kind: FaultKMSError},
		{Kind: FaultKMSError, Code: "0303"},
		{Kind: FaultServerError, Status: 404},
		{Kind: FaultThrottle, Times: -1},
		{Kind: FaultLatency, Delay: -time.Second},
		{Kind: FaultThrottle, Action: "list"},
	} {
		if err := srv.InjectFault(f); err == nil {
			t.Errorf("InjectFault(%+v): no error", f)
		}
	}
	if len(srv.Faults()) != 0 {
		t.Errorf("invalid faults queued: %+v", srv.Faults())
	}
}

func TestFaultJSON(t *testing.T) {
	var f Fault
	if err := json.Unmarshal([]byte(`{"kind":"latency","delay":"250ms","times":2}`), &f); err != nil {
		t.Fatal(err)
	}
	if f.Kind != FaultLatency || f.Delay != 250*time.Millisecond || f.Times != 2 {
		t.Errorf("decoded %+v", f)
	}
	b, err := json.Marshal(f)
	if err != nil || !strings.Contains(string(b), `"delay":"250ms"`) {
		t.Errorf("encoded %s, %v", b, err)
	}
	if err := json.Unmarshal([]byte(`{"kind":"latency","delay":"soon"}`), &f); err == nil {
		t.Error("bad delay accepted")
	}
}
