package kms_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

const (
	ak    = "EMULATORACCESSKEY"
	sk    = "EMULATOR-SECRET-KEY-never-log"
	sts   = "EMULATOR-SECURITY-TOKEN-never-log"
	token = "EMULATOR-IAM-TOKEN-never-log"
)

// fastRetry keeps every retry wait tiny, so fault tests take milliseconds.
var fastRetry = kms.RetryPolicy{BaseDelay: time.Millisecond, MaxDelay: 2 * time.Millisecond, MaxRetryAfter: 5 * time.Millisecond}

type fixture struct {
	srv      *kmstest.Server
	client   *kms.Client
	counters *kms.Counters
}

// newFixture starts an emulator accepting ak/sk and token, and a client signing with ak/sk.
func newFixture(t *testing.T, opts []kmstest.Option, modify func(*kms.Config)) *fixture {
	t.Helper()
	opts = append([]kmstest.Option{kmstest.WithAKSK(ak, sk, ""), kmstest.WithToken(token)}, opts...)
	srv := kmstest.NewServer(opts...)
	t.Cleanup(srv.Close)
	counters := &kms.Counters{}
	cfg := kms.Config{
		Endpoint:       srv.Endpoint(),
		ProjectID:      srv.ProjectID(),
		Credentials:    kms.Credentials{AccessKey: ak, SecretKey: sk},
		RequestTimeout: 2 * time.Second,
		Retry:          fastRetry,
		Observer:       counters,
	}
	if modify != nil {
		modify(&cfg)
	}
	c, err := kms.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{srv: srv, client: c, counters: counters}
}

func (f *fixture) filterCalls() int64 { return f.srv.Stats().ByAction[kmstest.ActionFilter] }

// normalized makes keys comparable: UTC times, non-nil tag maps.
func normalized(keys []kms.Key) []kms.Key {
	out := make([]kms.Key, len(keys))
	for i, k := range keys {
		k.CreationDate = k.CreationDate.UTC()
		k.ScheduledDeletionDate = k.ScheduledDeletionDate.UTC()
		k.ExpirationTime = k.ExpirationTime.UTC()
		if k.Tags == nil {
			k.Tags = map[string]string{}
		}
		out[i] = k
	}
	return out
}

func ids(keys []kms.Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.ID
	}
	return out
}

func TestPagingCallCounts(t *testing.T) {
	tests := []struct{ keys, pageSize, calls int }{
		{0, 1000, 1}, {1, 1000, 1}, {999, 1000, 1}, {1000, 1000, 1}, {1001, 1000, 2}, {2500, 1000, 3},
		{2500, 10, 250}, {0, 10, 1}, {10, 10, 1}, {11, 10, 2},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d keys at %d", tt.keys, tt.pageSize), func(t *testing.T) {
			f := newFixture(t, []kmstest.Option{kmstest.WithKeys(kmstest.GenerateKeys(tt.keys, map[string]string{"env": "prod"})...)},
				func(c *kms.Config) { c.PageSize = tt.pageSize })
			keys, err := f.client.ListKeys(context.Background(), kms.Filter{Tags: []kms.TagFilter{{Key: "env", Values: []string{"prod"}}}})
			if err != nil {
				t.Fatal(err)
			}
			if got := f.filterCalls(); got != int64(tt.calls) || f.counters.Count(kms.ActionFilter, kms.OutcomeSuccess) != int64(tt.calls) {
				t.Errorf("calls: emulator %d, observer %v; want %d", got, f.counters.Snapshot(), tt.calls)
			}
			if tt.keys == 2500 {
				t.Logf("MEASURED: %d keys at page size %d took %d ListKmsByTags calls", tt.keys, tt.pageSize, f.filterCalls())
			}
			if !reflect.DeepEqual(normalized(keys), normalized(f.srv.Keys())) {
				t.Errorf("listed %d keys differ from the %d stored", len(keys), f.srv.KeyCount())
			}
			for i, r := range f.srv.Requests() {
				if r.Limit != fmt.Sprintf(`"%d"`, tt.pageSize) || r.Offset != fmt.Sprintf(`"%d"`, i*tt.pageSize) ||
					r.Action != kmstest.ActionFilter || r.Auth != kmstest.AuthAKSK || r.Status != http.StatusOK {
					t.Fatalf("request %d: %+v", i, r)
				}
			}
		})
	}
}

func TestResponseShapes(t *testing.T) {
	deletion := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	stored := []kms.Key{
		kmstest.FillDefaults(kms.Key{ID: "0001", Alias: "a", Description: "first", Tags: map[string]string{"env": "prod", "team": "x"},
			State: kms.StatePendingDeletion, ScheduledDeletionDate: deletion, Default: true, RotationEnabled: true}),
		kmstest.FillDefaults(kms.Key{ID: "0002", Alias: "b", State: kms.StateDisabled, Origin: "external",
			ExpirationTime: deletion.Add(time.Hour), Spec: "SM2", Usage: "SIGN_VERIFY"}),
		kmstest.FillDefaults(kms.Key{ID: "0003", Alias: "c", State: kms.StatePendingImport}),
		kmstest.FillDefaults(kms.Key{ID: "0004", Alias: "d", State: kms.StatePendingActivation}),
	}
	for _, shape := range []kmstest.Shape{kmstest.ShapeSchema, kmstest.ShapeExample} {
		t.Run(shape.String(), func(t *testing.T) {
			f := newFixture(t, []kmstest.Option{kmstest.WithShape(shape), kmstest.WithKeys(stored...)}, nil)
			keys, err := f.client.ListKeys(context.Background(), kms.Filter{})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := normalized(keys), normalized(f.srv.Keys()); !reflect.DeepEqual(got, want) {
				t.Errorf("decoded\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestFilterSemantics(t *testing.T) {
	var stored []kms.Key
	for i, tags := range []map[string]string{
		{"env": "prod", "team": "pay"}, {"env": "prod", "team": "web"}, {"env": "dev", "team": "pay"}, {"env": "test"}, {},
	} {
		stored = append(stored, kmstest.FillDefaults(kms.Key{ID: fmt.Sprintf("k%d", i), Alias: fmt.Sprintf("svc-%d-Alias", i), Tags: tags}))
	}
	f := newFixture(t, []kmstest.Option{kmstest.WithKeys(stored...)}, nil)
	tests := []struct {
		name   string
		filter kms.Filter
		want   []string
	}{
		{"all", kms.Filter{}, []string{"k0", "k1", "k2", "k3", "k4"}},
		{"one value", kms.Filter{Tags: []kms.TagFilter{{Key: "env", Values: []string{"prod"}}}}, []string{"k0", "k1"}},
		{"values OR", kms.Filter{Tags: []kms.TagFilter{{Key: "env", Values: []string{"dev", "test"}}}}, []string{"k2", "k3"}},
		{"keys AND", kms.Filter{Tags: []kms.TagFilter{{Key: "env", Values: []string{"prod"}}, {Key: "team", Values: []string{"pay"}}}}, []string{"k0"}},
		{"any value", kms.Filter{Tags: []kms.TagFilter{{Key: "team"}}}, []string{"k0", "k1", "k2"}},
		{"match substring", kms.Filter{Matches: []kms.Match{{Key: kms.MatchResourceName, Value: "-2-"}}}, []string{"k2"}},
		{"match is case-sensitive", kms.Filter{Matches: []kms.Match{{Key: kms.MatchResourceName, Value: "alias"}}}, []string{}},
		{"tags and match", kms.Filter{Tags: []kms.TagFilter{{Key: "env", Values: []string{"prod"}}},
			Matches: []kms.Match{{Key: kms.MatchResourceName, Value: "svc-1"}}}, []string{"k1"}},
		{"nothing", kms.Filter{Tags: []kms.TagFilter{{Key: "absent"}}}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys, err := f.client.ListKeys(context.Background(), tt.filter)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(keys); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ListKeys = %v, want %v", got, tt.want)
			}
			n, err := f.client.CountKeys(context.Background(), tt.filter)
			if err != nil || n != len(tt.want) {
				t.Errorf("CountKeys = %d, %v; want %d", n, err, len(tt.want))
			}
		})
	}
}

// TestFilterRulesAgreeWithEmulator checks every rule twice: the client refuses the filter without
// sending anything, and the emulator (standing in for the API) refuses the same body with 400.
func TestFilterRulesAgreeWithEmulator(t *testing.T) {
	tooMany := make([]kms.TagFilter, kms.MaxTags+1)
	for i := range tooMany {
		tooMany[i] = kms.TagFilter{Key: fmt.Sprintf("k%d", i)}
	}
	invalid := map[string]kms.Filter{
		"empty key":           {Tags: []kms.TagFilter{{Key: ""}}},
		"long key":            {Tags: []kms.TagFilter{{Key: strings.Repeat("键", kms.MaxTagKeyLength+1)}}},
		"long value":          {Tags: []kms.TagFilter{{Key: "k", Values: []string{strings.Repeat("v", kms.MaxTagValueLength+1)}}}},
		"control char":        {Tags: []kms.TagFilter{{Key: "a\x1fb"}}},
		"control char value":  {Tags: []kms.TagFilter{{Key: "a", Values: []string{"\n"}}}},
		"duplicate key":       {Tags: []kms.TagFilter{{Key: "a"}, {Key: "a"}}},
		"duplicate value":     {Tags: []kms.TagFilter{{Key: "a", Values: []string{"x", "x"}}}},
		"too many keys":       {Tags: tooMany},
		"match key":           {Matches: []kms.Match{{Key: "key_alias", Value: "x"}}},
		"empty match value":   {Matches: []kms.Match{{Key: kms.MatchResourceName}}},
		"long match value":    {Matches: []kms.Match{{Key: kms.MatchResourceName, Value: strings.Repeat("m", kms.MaxMatchValueLength+1)}}},
		"forbidden in value":  {Tags: []kms.TagFilter{{Key: "a", Values: []string{"x=y"}}}},
		"forbidden in key *":  {Tags: []kms.TagFilter{{Key: "a*"}}},
		"forbidden in key <":  {Tags: []kms.TagFilter{{Key: "<a"}}},
		"forbidden in key >":  {Tags: []kms.TagFilter{{Key: "a>"}}},
		"forbidden in key \\": {Tags: []kms.TagFilter{{Key: `a\b`}}},
	}
	valid := map[string]kms.Filter{
		"max key":    {Tags: []kms.TagFilter{{Key: strings.Repeat("键", kms.MaxTagKeyLength)}}},
		"max value":  {Tags: []kms.TagFilter{{Key: "k", Values: []string{strings.Repeat("v", kms.MaxTagValueLength), ""}}}},
		"max tags":   {Tags: tooMany[:kms.MaxTags]},
		"max match":  {Matches: []kms.Match{{Key: kms.MatchResourceName, Value: strings.Repeat("m", kms.MaxMatchValueLength)}}},
		"punctuated": {Tags: []kms.TagFilter{{Key: "a.b-c_d:e/f@g", Values: []string{"!?#&'\"|"}}}},
	}
	f := newFixture(t, nil, nil)
	for name, filter := range invalid {
		t.Run("invalid "+name, func(t *testing.T) {
			before := f.srv.Stats().Total
			_, err := f.client.ListKeys(context.Background(), filter)
			var verr *kms.ValidationError
			if !errors.As(err, &verr) || len(verr.Problems) == 0 {
				t.Fatalf("err = %v, want *ValidationError", err)
			}
			if _, err := f.client.CountKeys(context.Background(), filter); !errors.As(err, &verr) {
				t.Errorf("CountKeys err = %v", err)
			}
			if f.srv.Stats().Total != before {
				t.Error("an invalid filter must not be sent")
			}
			if code := postRaw(t, f.srv, filter); code != http.StatusBadRequest {
				t.Errorf("emulator answered %d to a filter the client refuses", code)
			}
		})
	}
	for name, filter := range valid {
		t.Run("valid "+name, func(t *testing.T) {
			if _, err := f.client.ListKeys(context.Background(), filter); err != nil {
				t.Errorf("ListKeys: %v", err)
			}
			if code := postRaw(t, f.srv, filter); code != http.StatusOK {
				t.Errorf("emulator answered %d", code)
			}
		})
	}
}

// postRaw sends a filter the client would not send, with a token, and returns the status.
func postRaw(t *testing.T, srv *kmstest.Server, f kms.Filter) int {
	t.Helper()
	type tag struct {
		Key    string   `json:"key"`
		Values []string `json:"values"`
	}
	type match struct {
		Key   string `json:"key"`
		Value string `json:"value"`
	}
	body := struct {
		Action  string  `json:"action"`
		Limit   string  `json:"limit"`
		Offset  string  `json:"offset"`
		Tags    []tag   `json:"tags,omitempty"`
		Matches []match `json:"matches,omitempty"`
	}{Action: "filter", Limit: "10", Offset: "0"}
	for _, t := range f.Tags {
		body.Tags = append(body.Tags, tag{Key: t.Key, Values: append([]string{}, t.Values...)})
	}
	for _, m := range f.Matches {
		body.Matches = append(body.Matches, match{Key: string(m.Key), Value: m.Value})
	}
	data, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, srv.ActionURL(), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json;charset=UTF-8")
	req.Header.Set("X-Auth-Token", token)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

func TestFaults(t *testing.T) {
	const n = 2500
	tests := []struct {
		name  string
		fault kmstest.Fault
		// calls are the filter requests the emulator sees; outcome the observer's extra count.
		calls   int64
		outcome string
		timeout time.Duration // the request timeout, when the test needs it short
		wantErr string
		check   func(t *testing.T, err error)
	}{
		{name: "429 without Retry-After", fault: kmstest.Fault{Kind: kmstest.FaultThrottle, Times: 1}, calls: 4, outcome: kms.OutcomeThrottled},
		{name: "429 with Retry-After", fault: kmstest.Fault{Kind: kmstest.FaultThrottle, Times: 2, RetryAfter: 1}, calls: 5, outcome: kms.OutcomeThrottled},
		{name: "5xx HTML", fault: kmstest.Fault{Kind: kmstest.FaultServerError, Status: 502, Times: 1, Skip: 1}, calls: 4, outcome: kms.OutcomeServerError},
		{name: "latency beyond the request timeout", fault: kmstest.Fault{Kind: kmstest.FaultLatency, Delay: 10 * time.Second, Times: 1}, calls: 4,
			outcome: kms.OutcomeNetworkError, timeout: 300 * time.Millisecond},
		{name: "dropped connection", fault: kmstest.Fault{Kind: kmstest.FaultDrop, Times: 1, Skip: 2}, calls: 4, outcome: kms.OutcomeNetworkError},
		{name: "malformed JSON", fault: kmstest.Fault{Kind: kmstest.FaultMalformedJSON, Times: 1}, calls: 4, outcome: kms.OutcomeDecodeError},
		{name: "truncated JSON", fault: kmstest.Fault{Kind: kmstest.FaultTruncatedJSON, Times: 1, Skip: 1}, calls: 4, outcome: kms.OutcomeDecodeError},
		// Listing faults fail a pass; the restarted pass lists all three pages again.
		{name: "total_count moves between pages", fault: kmstest.Fault{Kind: kmstest.FaultTotalDrift, Times: 1, Delta: 1}, calls: 2 + 3},
		{name: "total_count shrinks", fault: kmstest.Fault{Kind: kmstest.FaultTotalDrift, Times: 1, Skip: 1, Delta: -5}, calls: 3 + 3},
		{name: "duplicate key across pages", fault: kmstest.Fault{Kind: kmstest.FaultDuplicate, Times: 1}, calls: 3 + 3},
		{name: "empty page with nonzero total", fault: kmstest.Fault{Kind: kmstest.FaultEmptyPage, Times: 1, Skip: 1}, calls: 2 + 3},
		{name: "persistent 503", fault: kmstest.Fault{Kind: kmstest.FaultServerError, Status: 503}, calls: 4, outcome: kms.OutcomeServerError,
			wantErr: "ListKmsByTags: giving up after 4 attempts: ListKmsByTags: http 503: unexpected body \"<html> <head><title>503 Service Unavailable",
			check: func(t *testing.T, err error) {
				var apiErr *kms.APIError
				if !errors.As(err, &apiErr) || !kms.IsRetryable(err) || kms.IsThrottled(err) || len(apiErr.Excerpt) > 200 {
					t.Errorf("%#v", apiErr)
				}
			}},
		{name: "persistent throttling", fault: kmstest.Fault{Kind: kmstest.FaultThrottle, RetryAfter: 30}, calls: 4, outcome: kms.OutcomeThrottled,
			wantErr: "giving up after 4 attempts: ListKmsByTags: http 429: APIGW.0308",
			check: func(t *testing.T, err error) {
				var apiErr *kms.APIError
				if !kms.IsThrottled(err) || !errors.As(err, &apiErr) || apiErr.RetryAfter != 30*time.Second {
					t.Errorf("err %v", err)
				}
			}},
		{name: "persistent drift", fault: kmstest.Fault{Kind: kmstest.FaultTotalDrift}, calls: 4 * 2,
			wantErr: "ListKmsByTags: listing inconsistent after 4 passes: total_count changed from 2500 to 2501 at offset 1000",
			check: func(t *testing.T, err error) {
				if !errors.Is(err, kms.ErrInconsistentListing) {
					t.Error("want ErrInconsistentListing")
				}
			}},
		{name: "persistent empty pages", fault: kmstest.Fault{Kind: kmstest.FaultEmptyPage}, calls: 4,
			wantErr: "listing inconsistent after 4 passes: empty page at offset 0 of total_count 2500"},
		{name: "permission denied is not retried", fault: kmstest.Fault{Kind: kmstest.FaultKMSError, Code: kmstest.CodeAPINotPermitted, Message: "role lacks kms:cmk:list"},
			calls: 1, outcome: kms.OutcomeClientError, wantErr: "ListKmsByTags: http 403: KMS.0307: role lacks kms:cmk:list",
			check: func(t *testing.T, err error) {
				if !kms.IsAuthFailure(err) || kms.IsRetryable(err) {
					t.Errorf("err %v", err)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, []kmstest.Option{kmstest.WithKeys(kmstest.GenerateKeys(n, nil)...)},
				func(c *kms.Config) {
					if tt.timeout > 0 {
						c.RequestTimeout = tt.timeout
					}
				})
			fault := tt.fault
			fault.Action = kmstest.ActionFilter
			if err := f.srv.InjectFault(fault); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			keys, err := f.client.ListKeys(context.Background(), kms.Filter{})
			elapsed := time.Since(start)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if len(keys) != n {
					t.Errorf("got %d keys, want %d", len(keys), n)
				}
			} else {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v\nwant %q", err, tt.wantErr)
				}
				if keys != nil {
					t.Error("a failed listing returned keys")
				}
			}
			if got := f.filterCalls(); got != tt.calls {
				t.Errorf("filter calls %d, want %d", got, tt.calls)
			}
			if tt.outcome != "" && f.counters.Count(kms.ActionFilter, tt.outcome) == 0 {
				t.Errorf("no %s observed: %v", tt.outcome, f.counters.Snapshot())
			}
			if f.counters.Total(kms.ActionFilter) != tt.calls {
				t.Errorf("observer saw %v, want %d requests", f.counters.Snapshot(), tt.calls)
			}
			if fault.RetryAfter > 0 && tt.wantErr == "" && elapsed < fastRetry.MaxRetryAfter {
				t.Errorf("Retry-After not honoured: done in %v", elapsed)
			}
			if tt.check != nil {
				tt.check(t, err)
			}
		})
	}
}

func TestAuthentication(t *testing.T) {
	tests := []struct {
		name     string
		opts     []kmstest.Option
		creds    kms.Credentials
		wantCode string // "" = accepted
		wantAuth string
	}{
		{name: "signature accepted", creds: kms.Credentials{AccessKey: ak, SecretKey: sk}, wantAuth: kmstest.AuthAKSK},
		{name: "signature rejected: wrong secret", creds: kms.Credentials{AccessKey: ak, SecretKey: "wrong-" + sk}, wantCode: kmstest.CodeTokenInvalid},
		{name: "unknown access key", creds: kms.Credentials{AccessKey: "OTHER", SecretKey: sk}, wantCode: kmstest.CodeTokenInvalid},
		{name: "temporary credentials", opts: []kmstest.Option{kmstest.WithAKSK("TMPAK", sk, sts)},
			creds: kms.Credentials{AccessKey: "TMPAK", SecretKey: sk, SecurityToken: sts}, wantAuth: kmstest.AuthAKSK},
		{name: "temporary credentials without their token", opts: []kmstest.Option{kmstest.WithAKSK("TMPAK", sk, sts)},
			creds: kms.Credentials{AccessKey: "TMPAK", SecretKey: sk}, wantCode: kmstest.CodeTokenMissing},
		{name: "token accepted", creds: kms.Credentials{Token: token}, wantAuth: kmstest.AuthToken},
		{name: "unknown token", creds: kms.Credentials{Token: "other-token"}, wantCode: kmstest.CodeTokenInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, append(tt.opts, kmstest.WithKeys(kmstest.GenerateKeys(3, nil)...)),
				func(c *kms.Config) { c.Credentials = tt.creds })
			keys, err := f.client.ListKeys(context.Background(), kms.Filter{})
			if tt.wantCode == "" {
				if err != nil || len(keys) != 3 {
					t.Fatalf("keys %d, err %v", len(keys), err)
				}
				if got := f.srv.Requests()[0].Auth; got != tt.wantAuth {
					t.Errorf("auth %q, want %q", got, tt.wantAuth)
				}
				return
			}
			var apiErr *kms.APIError
			if !errors.As(err, &apiErr) || apiErr.Code != tt.wantCode || !kms.IsAuthFailure(err) || kms.IsRetryable(err) {
				t.Fatalf("err = %v, want %s", err, tt.wantCode)
			}
			if f.srv.Stats().Total != 1 {
				t.Errorf("an auth failure must not be retried: %d requests", f.srv.Stats().Total)
			}
			for _, secret := range []string{sk, sts, token} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error leaks a secret: %v", err)
				}
			}
		})
	}
}

func TestExpiredTokenAndProject(t *testing.T) {
	f := newFixture(t, nil, func(c *kms.Config) { c.Credentials = kms.Credentials{Token: token} })
	f.srv.ExpireToken(token)
	if _, err := f.client.CountKeys(context.Background(), kms.Filter{}); !strings.Contains(fmt.Sprint(err), "http 403: KMS.0303") {
		t.Errorf("expired token: %v", err)
	}
	g := newFixture(t, nil, func(c *kms.Config) { c.ProjectID = "another-project" })
	if _, err := g.client.ListKeys(context.Background(), kms.Filter{}); !strings.Contains(fmt.Sprint(err), "http 403: KMS.0305") {
		t.Errorf("wrong project: %v", err)
	}
}

func TestTLSWithCustomCA(t *testing.T) {
	srv := kmstest.NewTLSServer(kmstest.WithAKSK(ak, sk, ""), kmstest.WithKeys(kmstest.GenerateKeys(5, nil)...))
	defer srv.Close()
	cfg := kms.Config{
		Endpoint: srv.Endpoint(), ProjectID: srv.ProjectID(),
		Credentials: kms.Credentials{AccessKey: ak, SecretKey: sk}, Retry: fastRetry,
	}
	untrusting, err := kms.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = untrusting.ListKeys(context.Background(), kms.Filter{})
	var terr *kms.TransportError
	if !errors.As(err, &terr) || kms.IsRetryable(err) || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("unknown CA: err = %v, want a non-retryable certificate error", err)
	}
	cfg.CABundle = srv.CertificatePEM()
	trusting, err := kms.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := trusting.ListKeys(context.Background(), kms.Filter{})
	if err != nil || len(keys) != 5 {
		t.Fatalf("with the CA bundle: %d keys, %v", len(keys), err)
	}
	cfg.CABundle = nil
	cfg.HTTPClient = srv.Client()
	injected, err := kms.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := injected.ListKeys(context.Background(), kms.Filter{}); err != nil {
		t.Errorf("with an injected http.Client: %v", err)
	}
}

// captureLogger returns a V(1) logr.Logger writing into a buffer.
func captureLogger() (logr.Logger, func() string) {
	var mu sync.Mutex
	var b strings.Builder
	l := funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		b.WriteString(prefix + " " + args + "\n")
	}, funcr.Options{Verbosity: 1})
	return l, func() string { mu.Lock(); defer mu.Unlock(); return b.String() }
}

func TestRedaction(t *testing.T) {
	for _, tt := range []struct {
		name    string
		creds   kms.Credentials
		headers []string
	}{
		{"aksk with security token", kms.Credentials{AccessKey: "TMPAK", SecretKey: sk, SecurityToken: sts}, []string{"Authorization", "X-Security-Token"}},
		{"token", kms.Credentials{Token: token}, []string{"X-Auth-Token"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			logger, logged := captureLogger()
			f := newFixture(t, []kmstest.Option{kmstest.WithAKSK("TMPAK", sk, sts), kmstest.WithKeys(kmstest.GenerateKeys(2, nil)...)},
				func(c *kms.Config) { c.Credentials = tt.creds; c.Logger = logger })
			// A throttled request, a good listing, then a rejected one.
			if err := f.srv.InjectFault(kmstest.Fault{Kind: kmstest.FaultThrottle, Times: 1}); err != nil {
				t.Fatal(err)
			}
			if _, err := f.client.ListKeys(context.Background(), kms.Filter{}); err != nil {
				t.Fatal(err)
			}
			f.srv.RemoveAKSK("TMPAK")
			f.srv.RemoveToken(token)
			_, err := f.client.CountKeys(context.Background(), kms.Filter{})
			if !kms.IsAuthFailure(err) {
				t.Fatalf("err = %v", err)
			}
			out := logged() + "\n" + err.Error() + fmt.Sprintf("\n%v %+v %#v %s", err, f.client, f.client, tt.creds)
			for _, secret := range []string{sk, sts, token} {
				if strings.Contains(out, secret) {
					t.Errorf("secret leaked:\n%s", out)
				}
			}
			for _, h := range tt.headers {
				if !strings.Contains(out, h+": [redacted]") {
					t.Errorf("%s not logged redacted:\n%s", h, out)
				}
			}
			for _, want := range []string{`"method"="POST"`, `"status"=429`, `"status"=200`, `"status"=403`, `"duration"=`,
				`"url"="` + f.srv.ActionURL() + `"`} {
				if !strings.Contains(out, want) {
					t.Errorf("debug log lacks %s:\n%s", want, out)
				}
			}
		})
	}
}

func TestCountKeys(t *testing.T) {
	f := newFixture(t, []kmstest.Option{
		kmstest.WithKeys(append(kmstest.GenerateKeys(1234, map[string]string{"env": "prod"}), kmstest.GenerateKeys(7, map[string]string{"env": "dev"})...)...),
	}, nil)
	n, err := f.client.CountKeys(context.Background(), kms.Filter{Tags: []kms.TagFilter{{Key: "env", Values: []string{"prod"}}}})
	if err != nil || n != 1234 {
		t.Fatalf("CountKeys = %d, %v", n, err)
	}
	r := f.srv.Requests()[0]
	if r.Action != kmstest.ActionCount || r.Limit != "" || r.Offset != "" || f.counters.Count(kms.ActionCount, kms.OutcomeSuccess) != 1 {
		t.Errorf("request %+v, counters %v", r, f.counters.Snapshot())
	}
	if err := f.srv.InjectFault(kmstest.Fault{Kind: kmstest.FaultDrop, Action: kmstest.ActionCount, Times: 1}); err != nil {
		t.Fatal(err)
	}
	if n, err := f.client.CountKeys(context.Background(), kms.Filter{}); err != nil || n != 1241 {
		t.Errorf("after a dropped connection: %d, %v", n, err)
	}
}

func TestCallerCancellation(t *testing.T) {
	f := newFixture(t, []kmstest.Option{kmstest.WithKeys(kmstest.GenerateKeys(3, nil)...)}, nil)
	if err := f.srv.InjectFault(kmstest.Fault{Kind: kmstest.FaultLatency, Delay: time.Minute}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := f.client.ListKeys(ctx, kms.Filter{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v", err)
	}
	if got := f.counters.Snapshot(); len(got) != 0 {
		t.Errorf("a request abandoned by the caller was observed: %v", got)
	}
}
