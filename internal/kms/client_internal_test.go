package kms

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
)

const (
	testProject = "proj0123"
	testAK      = "TESTACCESSKEY"
	testSK      = "TESTSECRETKEY-do-not-log"
	testSTS     = "TESTSECURITYTOKEN-do-not-log"
	testToken   = "TESTIAMTOKEN-do-not-log"
)

// fakeKMS is a minimal scripted server: each request pops the next scripted handler, or falls
// back to serving keys. It records every request.
type fakeKMS struct {
	mu       sync.Mutex
	keys     int
	script   []http.HandlerFunc
	requests []recorded
}

type recorded struct {
	header http.Header
	body   []byte
	path   string
}

func (f *fakeKMS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	f.mu.Lock()
	f.requests = append(f.requests, recorded{header: r.Header.Clone(), body: body, path: r.URL.Path})
	var next http.HandlerFunc
	if len(f.script) > 0 {
		next, f.script = f.script[0], f.script[1:]
	}
	n := f.keys
	f.mu.Unlock()
	if next != nil {
		next(w, r)
		return
	}
	servePage(w, body, n)
}

func (f *fakeKMS) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests)
}

func (f *fakeKMS) last() recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[len(f.requests)-1]
}

func servePage(w http.ResponseWriter, body []byte, n int) {
	var req struct{ Action, Limit, Offset string }
	_ = json.Unmarshal(body, &req)
	if req.Action == ActionCount {
		_, _ = fmt.Fprintf(w, `{"total_count":%d}`, n)
		return
	}
	limit, _ := strconv.Atoi(req.Limit)
	offset, _ := strconv.Atoi(req.Offset)
	var res []string
	for i := offset; i < n && i < offset+limit; i++ {
		res = append(res, fmt.Sprintf(`{"resource_id":"key-%05d","resource_detail":{"key_id":"key-%05d","key_state":"2"},"tags":[]}`, i, i))
	}
	_, _ = fmt.Fprintf(w, `{"resources":[%s],"total_count":%d}`, strings.Join(res, ","), n)
}

func status(code int, body string, headers ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}
}

// newTestClient starts f and returns a client whose sleeps are recorded, not slept.
func newTestClient(t *testing.T, f *fakeKMS, modify func(*Config)) (*Client, *[]time.Duration) {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	cfg := Config{
		Endpoint:    srv.URL,
		ProjectID:   testProject,
		Credentials: Credentials{AccessKey: testAK, SecretKey: testSK},
		Retry:       RetryPolicy{BaseDelay: time.Millisecond, MaxDelay: 4 * time.Millisecond},
	}
	if modify != nil {
		modify(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	slept := &[]time.Duration{}
	c.sleep = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		defer mu.Unlock()
		*slept = append(*slept, d)
		return ctx.Err()
	}
	c.jitter = func(ceiling time.Duration) time.Duration { return ceiling } // worst case
	return c, slept
}

func TestListKeysPagingFake(t *testing.T) {
	for _, tt := range []struct{ keys, pageSize, calls int }{
		{0, 1000, 1}, {1, 1000, 1}, {1000, 1000, 1}, {1001, 1000, 2}, {25, 10, 3}, {30, 10, 3},
	} {
		f := &fakeKMS{keys: tt.keys}
		c, _ := newTestClient(t, f, func(cfg *Config) { cfg.PageSize = tt.pageSize })
		keys, err := c.ListKeys(context.Background(), Filter{})
		if err != nil {
			t.Fatalf("%d keys: %v", tt.keys, err)
		}
		if len(keys) != tt.keys || f.count() != tt.calls {
			t.Errorf("%d keys at %d: got %d keys in %d calls, want %d calls", tt.keys, tt.pageSize, len(keys), f.count(), tt.calls)
		}
	}
}

// verifySDKSignature checks SDK-HMAC-SHA256 independently of the SDK's signer.
func verifySDKSignature(r recorded, method, ak, sk string) error {
	auth := r.header.Get("Authorization")
	prefix := "SDK-HMAC-SHA256 Access=" + ak + ", SignedHeaders="
	if !strings.HasPrefix(auth, prefix) {
		return fmt.Errorf("authorization %q", auth)
	}
	signedHeaders, sig, ok := strings.Cut(strings.TrimPrefix(auth, prefix), ", Signature=")
	if !ok {
		return fmt.Errorf("authorization %q", auth)
	}
	var canonicalHeaders strings.Builder
	for _, name := range strings.Split(signedHeaders, ";") {
		fmt.Fprintf(&canonicalHeaders, "%s:%s\n", name, strings.TrimSpace(r.header.Get(name)))
	}
	bodyHash := sha256.Sum256(r.body)
	canonical := strings.Join([]string{method, r.path + "/", "", canonicalHeaders.String(), signedHeaders,
		hex.EncodeToString(bodyHash[:])}, "\n")
	crHash := sha256.Sum256([]byte(canonical))
	sts := "SDK-HMAC-SHA256\n" + r.header.Get("X-Sdk-Date") + "\n" + hex.EncodeToString(crHash[:])
	mac := hmac.New(sha256.New, []byte(sk))
	mac.Write([]byte(sts))
	if want := hex.EncodeToString(mac.Sum(nil)); want != sig {
		return fmt.Errorf("signature %s, want %s", sig, want)
	}
	return nil
}

func TestSigningAKSK(t *testing.T) {
	f := &fakeKMS{keys: 1}
	c, _ := newTestClient(t, f, func(cfg *Config) { cfg.Credentials.SecurityToken = testSTS })
	fixed := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c.now = func() time.Time { return fixed }
	f2 := Filter{Tags: []TagFilter{{Key: "環境", Values: []string{"a&b", "€"}}}}
	if _, err := c.ListKeys(context.Background(), f2); err != nil {
		t.Fatal(err)
	}
	r := f.last()
	if got := r.header.Get("X-Sdk-Date"); got != "20260102T030405Z" {
		t.Errorf("X-Sdk-Date %q", got)
	}
	if got := r.header.Get("Content-Type"); got != contentType {
		t.Errorf("Content-Type %q", got)
	}
	if r.path != "/v1.0/"+testProject+"/kms/resource_instances/action" {
		t.Errorf("path %q", r.path)
	}
	if !strings.Contains(r.header.Get("Authorization"), "SignedHeaders=x-project-id;x-sdk-date;x-security-token,") {
		t.Errorf("authorization %q must sign the security token", r.header.Get("Authorization"))
	}
	if err := verifySDKSignature(r, http.MethodPost, testAK, testSK); err != nil {
		t.Error(err)
	}
	if err := verifySDKSignature(r, http.MethodPost, testAK, "wrong"); err == nil {
		t.Error("a wrong SK must not verify")
	}
	if r.header.Get("X-Auth-Token") != "" {
		t.Error("AK/SK requests carry no X-Auth-Token")
	}
}

func TestTokenAuth(t *testing.T) {
	f := &fakeKMS{}
	c, _ := newTestClient(t, f, func(cfg *Config) {
		cfg.Credentials = Credentials{Token: testToken, AccessKey: "ignored", SecretKey: "ignored"}
	})
	if _, err := c.CountKeys(context.Background(), Filter{}); err != nil {
		t.Fatal(err)
	}
	r := f.last()
	if r.header.Get("X-Auth-Token") != testToken || r.header.Get("Authorization") != "" || r.header.Get("X-Sdk-Date") != "" {
		t.Errorf("headers %v", r.header)
	}
	if string(r.body) != `{"action":"count"}` {
		t.Errorf("body %s", r.body)
	}
}

func TestRetriesAndErrors(t *testing.T) {
	html := "<html>\n<body>\x01Bad Gateway " + strings.Repeat("x", 400) + "</body></html>"
	tests := []struct {
		name      string
		script    []http.HandlerFunc
		wantErr   string // "" = success
		calls     int
		retryable bool
		check     func(t *testing.T, err error, slept []time.Duration)
	}{
		{name: "429 then success", script: []http.HandlerFunc{status(429, "")}, calls: 2,
			check: func(t *testing.T, _ error, slept []time.Duration) {
				if len(slept) != 1 || slept[0] != time.Millisecond {
					t.Errorf("slept %v, want [1ms]", slept)
				}
			}},
		{name: "429 with Retry-After is honoured but capped", script: []http.HandlerFunc{status(429, "", "Retry-After", "3")},
			calls: 2, check: func(t *testing.T, _ error, slept []time.Duration) {
				if len(slept) != 1 || slept[0] != 50*time.Millisecond {
					t.Errorf("slept %v, want [50ms] (Retry-After 3s capped)", slept)
				}
			}},
		{name: "5xx html exhausts attempts", script: []http.HandlerFunc{status(502, html), status(503, html), status(500, html), status(504, html)},
			wantErr: "ListKmsByTags: giving up after 4 attempts: ListKmsByTags: http 504: unexpected body", calls: 4, retryable: true,
			check: func(t *testing.T, err error, slept []time.Duration) {
				var apiErr *APIError
				if !errors.As(err, &apiErr) || len(apiErr.Excerpt) > maxExcerpt || strings.ContainsAny(apiErr.Excerpt, "\n\x01") {
					t.Errorf("excerpt %q", apiErr.Excerpt)
				}
				if want := []time.Duration{1 * time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond}; fmt.Sprint(slept) != fmt.Sprint(want) {
					t.Errorf("slept %v, want %v", slept, want)
				}
			}},
		{name: "400 is not retried", script: []http.HandlerFunc{status(400, `{"error":{"error_code":"KMS.0206","error_msg":"tags[0].key invalid"}}`)},
			wantErr: "ListKmsByTags: http 400: KMS.0206: tags[0].key invalid", calls: 1,
			check: func(t *testing.T, err error, _ []time.Duration) {
				var apiErr *APIError
				if !errors.As(err, &apiErr) || apiErr.Code != "KMS.0206" || IsAuthFailure(err) || IsThrottled(err) {
					t.Errorf("%#v", apiErr)
				}
			}},
		{name: "403 is an auth failure", script: []http.HandlerFunc{status(403, `{"error":{"error_code":"KMS.0302","error_msg":"bad signature"}}`)},
			wantErr: "ListKmsByTags: http 403: KMS.0302: bad signature", calls: 1,
			check: func(t *testing.T, err error, _ []time.Duration) {
				if !IsAuthFailure(err) {
					t.Error("IsAuthFailure = false")
				}
			}},
		{name: "401 from a gateway", script: []http.HandlerFunc{status(401, `{"error_code":"APIGW.0301","error_msg":"incorrect IAM authentication information"}`)},
			wantErr: "http 401: APIGW.0301", calls: 1},
		{name: "malformed JSON is retried", script: []http.HandlerFunc{status(200, `{"resources":[`)}, calls: 2},
		{name: "missing key id is not retried", script: []http.HandlerFunc{status(200, `{"resources":[{}],"total_count":1}`)},
			wantErr: "ListKmsByTags: decode response: resources[0]: missing key id", calls: 1},
		{name: "persistent throttling", script: []http.HandlerFunc{status(429, ""), status(429, ""), status(429, ""), status(429, "")},
			wantErr: "giving up after 4 attempts: ListKmsByTags: http 429", calls: 4, retryable: true,
			check: func(t *testing.T, err error, _ []time.Duration) {
				if !IsThrottled(err) {
					t.Error("IsThrottled = false")
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeKMS{keys: 3, script: tt.script}
			counters := &Counters{}
			c, slept := newTestClient(t, f, func(cfg *Config) {
				cfg.Retry.MaxRetryAfter = 50 * time.Millisecond
				cfg.Observer = counters
			})
			keys, err := c.ListKeys(context.Background(), Filter{})
			if tt.wantErr == "" {
				if err != nil || len(keys) != 3 {
					t.Fatalf("keys %d, err %v", len(keys), err)
				}
			} else {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if keys != nil {
					t.Error("a failed listing must return no keys")
				}
				if IsRetryable(err) != tt.retryable {
					t.Errorf("IsRetryable = %v", IsRetryable(err))
				}
			}
			if f.count() != tt.calls || counters.Total(ActionFilter) != int64(tt.calls) {
				t.Errorf("calls: server %d, observer %d, want %d", f.count(), counters.Total(ActionFilter), tt.calls)
			}
			if tt.check != nil {
				tt.check(t, err, *slept)
			}
		})
	}
}

func TestObserverOutcomes(t *testing.T) {
	f := &fakeKMS{keys: 1, script: []http.HandlerFunc{
		status(429, ""), status(500, ""), status(200, "{"), status(400, "{}"),
	}}
	counters := &Counters{}
	c, _ := newTestClient(t, f, func(cfg *Config) { cfg.Observer = counters })
	if _, err := c.ListKeys(context.Background(), Filter{}); err == nil {
		t.Fatal("want the 400 to fail the listing")
	}
	if _, err := c.CountKeys(context.Background(), Filter{}); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"filter/throttled": 1, "filter/server_error": 1, "filter/decode_error": 1,
		"filter/client_error": 1, "count/success": 1}
	if got := counters.Snapshot(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("counters %v, want %v", got, want)
	}
}

func TestInconsistentListing(t *testing.T) {
	moving := func(total int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			servePage(w, body, total)
		}
	}
	t.Run("total moves once, the restart succeeds", func(t *testing.T) {
		f := &fakeKMS{keys: 25, script: []http.HandlerFunc{moving(24)}}
		c, _ := newTestClient(t, f, func(cfg *Config) { cfg.PageSize = 10 })
		keys, err := c.ListKeys(context.Background(), Filter{})
		if err != nil || len(keys) != 25 {
			t.Fatalf("keys %d, err %v", len(keys), err)
		}
		if f.count() != 2+3 { // first pass fails on page 2, second pass takes 3 pages
			t.Errorf("calls %d", f.count())
		}
	})
	t.Run("total keeps moving", func(t *testing.T) {
		var script []http.HandlerFunc
		for i := 0; i < 20; i++ {
			script = append(script, moving(20+i%2))
		}
		f := &fakeKMS{script: script}
		c, slept := newTestClient(t, f, func(cfg *Config) { cfg.PageSize = 10 })
		_, err := c.ListKeys(context.Background(), Filter{})
		if !errors.Is(err, ErrInconsistentListing) || !strings.Contains(err.Error(), "after 4 passes: total_count changed") {
			t.Fatalf("err = %v", err)
		}
		if len(*slept) != 3 {
			t.Errorf("want a backoff before each of 3 restarts, slept %v", *slept)
		}
	})
	t.Run("empty page below total", func(t *testing.T) {
		empty := status(200, `{"resources":[],"total_count":5}`)
		f := &fakeKMS{keys: 5, script: []http.HandlerFunc{empty, empty, empty, empty}}
		c, _ := newTestClient(t, f, nil)
		_, err := c.ListKeys(context.Background(), Filter{})
		if !errors.Is(err, ErrInconsistentListing) || !strings.Contains(err.Error(), "empty page at offset 0 of total_count 5") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("duplicate hides a key", func(t *testing.T) {
		dup := status(200, `{"resources":[{"resource_id":"a"},{"resource_id":"a"}],"total_count":2}`)
		f := &fakeKMS{keys: 2, script: []http.HandlerFunc{dup}}
		c, _ := newTestClient(t, f, nil)
		keys, err := c.ListKeys(context.Background(), Filter{})
		if err != nil || len(keys) != 2 || f.count() != 2 {
			t.Fatalf("keys %v, err %v, calls %d", keys, err, f.count())
		}
	})
}

func TestContextCancellation(t *testing.T) {
	f := &fakeKMS{script: []http.HandlerFunc{status(503, "")}}
	counters := &Counters{}
	c, _ := newTestClient(t, f, func(cfg *Config) { cfg.Observer = counters })
	ctx, cancel := context.WithCancel(context.Background())
	c.sleep = func(ctx context.Context, d time.Duration) error {
		cancel()
		return sleepContext(ctx, d)
	}
	_, err := c.ListKeys(ctx, Filter{})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "while waiting to retry after 1 attempt") {
		t.Fatalf("err = %v", err)
	}
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 503 {
		t.Errorf("the last error must stay wrapped: %v", err)
	}
	if _, err := c.ListKeys(ctx, Filter{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
	if got := counters.Snapshot(); fmt.Sprint(got) != "map[filter/server_error:1]" {
		t.Errorf("requests abandoned by the caller must not be observed: %v", got)
	}
}

func TestBackoff(t *testing.T) {
	c, err := New(validConfig)
	if err != nil {
		t.Fatal(err)
	}
	var ceilings []time.Duration
	c.jitter = func(ceiling time.Duration) time.Duration { ceilings = append(ceilings, ceiling); return ceiling / 2 }
	for n := 1; n <= 8; n++ {
		c.backoff(n)
	}
	c.backoff(1000)
	want := "[200ms 400ms 800ms 1.6s 3.2s 5s 5s 5s 5s]"
	if fmt.Sprint(ceilings) != want {
		t.Errorf("ceilings %v, want %v", ceilings, want)
	}
	throttled := &APIError{StatusCode: 429, RetryAfter: time.Hour}
	if d := c.retryDelay(1, throttled); d != DefaultMaxRetryAfter {
		t.Errorf("Retry-After 1h: delay %v, want the cap", d)
	}
	if d := c.retryDelay(1, &APIError{StatusCode: 429, RetryAfter: time.Millisecond}); d != 100*time.Millisecond {
		t.Errorf("Retry-After shorter than the backoff: delay %v", d)
	}
	for i := 0; i < 1000; i++ {
		if d := fullJitter(10 * time.Millisecond); d < 0 || d > 10*time.Millisecond {
			t.Fatalf("jitter %v out of range", d)
		}
	}
	if fullJitter(0) != 0 {
		t.Error("jitter of 0")
	}
}

func TestSleepContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := sleepContext(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
	if err := sleepContext(context.Background(), 0); err != nil {
		t.Errorf("err = %v", err)
	}
	if err := sleepContext(context.Background(), time.Microsecond); err != nil {
		t.Errorf("err = %v", err)
	}
}

func TestRequestTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	hang := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
	f := &fakeKMS{keys: 1, script: []http.HandlerFunc{hang}}
	counters := &Counters{}
	c, _ := newTestClient(t, f, func(cfg *Config) { cfg.RequestTimeout = 20 * time.Millisecond; cfg.Observer = counters })
	keys, err := c.ListKeys(context.Background(), Filter{})
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %d, err %v", len(keys), err)
	}
	if counters.Count(ActionFilter, OutcomeNetworkError) != 1 {
		t.Errorf("counters %v", counters.Snapshot())
	}
	c.s.retry.MaxAttempts = 1
	f.script = []http.HandlerFunc{hang}
	_, err = c.ListKeys(context.Background(), Filter{})
	var terr *TransportError
	if !errors.As(err, &terr) || !terr.Timeout() || !IsRetryable(err) ||
		!strings.Contains(err.Error(), "giving up after 1 attempt: ListKmsByTags: request failed: timed out after 20ms") {
		t.Errorf("err = %v", err)
	}
}

func TestDebugLogRedaction(t *testing.T) {
	for _, creds := range []Credentials{
		{AccessKey: testAK, SecretKey: testSK, SecurityToken: testSTS},
		{Token: testToken},
	} {
		t.Run(creds.String(), func(t *testing.T) {
			var mu sync.Mutex
			var lines []string
			logger := funcr.New(func(prefix, args string) {
				mu.Lock()
				defer mu.Unlock()
				lines = append(lines, prefix+" "+args)
			}, funcr.Options{Verbosity: 1})
			// The server echoes the credential headers into its error body, as a misbehaving
			// gateway might.
			echo := func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(400)
				_, _ = fmt.Fprintf(w, `{"error":{"error_code":"KMS.0202","error_msg":"auth=%s token=%s sts=%s"}}`,
					r.Header.Get("Authorization"), r.Header.Get("X-Auth-Token"), r.Header.Get("X-Security-Token"))
			}
			f := &fakeKMS{script: []http.HandlerFunc{status(500, ""), echo}}
			c, _ := newTestClient(t, f, func(cfg *Config) { cfg.Credentials = creds; cfg.Logger = logger })
			_, err := c.ListKeys(context.Background(), Filter{})
			if err == nil {
				t.Fatal("want error")
			}
			mu.Lock()
			all := strings.Join(lines, "\n") + "\n" + err.Error() + fmt.Sprintf("%v %+v %#v", err, c, c)
			mu.Unlock()
			for _, secret := range []string{testSK, testSTS, testToken} {
				if strings.Contains(all, secret) {
					t.Errorf("secret %q leaked:\n%s", secret, all)
				}
			}
			if len(lines) < 2 || !strings.Contains(all, `"status"=500`) || !strings.Contains(all, `"method"="POST"`) ||
				!strings.Contains(all, `"duration"=`) || !strings.Contains(all, "/v1.0/"+testProject+"/kms/resource_instances/action") {
				t.Errorf("debug lines lack method, url, status or duration:\n%s", all)
			}
			for _, h := range []string{"Authorization", "X-Auth-Token", "X-Security-Token"} {
				if f.last().header.Get(h) != "" && !strings.Contains(all, h+": [redacted]") {
					t.Errorf("header %s not shown redacted:\n%s", h, all)
				}
			}
		})
	}
}

func TestRedactHeaders(t *testing.T) {
	h := http.Header{"Authorization": {"secret"}, "X-Auth-Token": {"t"}, "X-Security-Token": {"s"}, "X-Sdk-Date": {"d"}}
	got := strings.Join(redactHeaders(h), "|")
	if got != "Authorization: [redacted]|X-Auth-Token: [redacted]|X-Sdk-Date: d|X-Security-Token: [redacted]" {
		t.Errorf("got %q", got)
	}
}

func TestAPIErrorParsing(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	resp := &http.Response{StatusCode: 429, Header: http.Header{
		"Retry-After": {now.Add(90 * time.Second).Format(http.TimeFormat)}, "X-Request-Id": {"req-1"}}}
	e := newAPIError(ActionCount, resp, []byte("Too Many Requests"), now, nil)
	if e.RetryAfter != 90*time.Second || e.RequestID != "req-1" || e.Excerpt != "Too Many Requests" || !e.Retryable() {
		t.Errorf("%+v", e)
	}
	if got := e.Error(); got != `ListKmsByTags (action count): http 429: unexpected body "Too Many Requests" (request id req-1)` {
		t.Errorf("Error() = %q", got)
	}
	for in, want := range map[string]time.Duration{"": 0, "0": 0, "-3": 0, "2": 2 * time.Second, "soon": 0,
		"99999999": 24 * time.Hour} {
		if got := parseRetryAfter(in, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", in, got, want)
		}
	}
	if got := sanitize("a\n\n\tb\x00c\u200bd"+strings.Repeat("é", 200), 20); got != "a b c?déééééé" || len(got) > 20 {
		t.Errorf("sanitize = %q (%d bytes)", got, len(got))
	}
	if got := sanitize("\xff\xfeok", 10); got != "?ok" {
		t.Errorf("sanitize invalid UTF-8 = %q", got)
	}
}

func TestTransportErrorRetryable(t *testing.T) {
	f := &fakeKMS{}
	c, _ := newTestClient(t, f, func(cfg *Config) {
		cfg.Retry.MaxAttempts = 2
		cfg.Transport = roundTripFunc(func(*http.Request) (*http.Response, error) {
			return nil, errors.New("connection reset by peer")
		})
	})
	_, err := c.CountKeys(context.Background(), Filter{})
	if !IsRetryable(err) || !strings.Contains(err.Error(), "giving up after 2 attempts: ListKmsByTags (action count): request failed: connection reset by peer") {
		t.Errorf("err = %v", err)
	}
}
