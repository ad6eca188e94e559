package kmstest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth/signer"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/request"
)

const (
	testToken  = "test-token-0123456789"
	samplePath = "../../hack/kms-emulator/sample-keys.json"
)

// listResponse decodes a schema-shaped filter answer.
type listResponse struct {
	Resources []struct {
		ResourceID     string          `json:"resource_id"`
		ResourceName   string          `json:"resource_name"`
		ResourceDetail json.RawMessage `json:"resource_detail"`
		Tags           []tagItem       `json:"tags"`
	} `json:"resources"`
	TotalCount *int `json:"total_count"`
}

func (l listResponse) ids() []string {
	ids := make([]string, len(l.Resources))
	for i, r := range l.Resources {
		ids[i] = r.ResourceID
	}
	return ids
}

func (l listResponse) names() []string {
	names := make([]string, len(l.Resources))
	for i, r := range l.Resources {
		names[i] = r.ResourceName
	}
	return names
}

// newTestServer starts a server accepting testToken and closes it when the test ends.
func newTestServer(t testing.TB, opts ...Option) *Server {
	t.Helper()
	srv := NewServer(append([]Option{WithToken(testToken)}, opts...)...)
	t.Cleanup(srv.Close)
	return srv
}

// newSampleServer is newTestServer with the sample seed file loaded.
func newSampleServer(t testing.TB, opts ...Option) *Server {
	t.Helper()
	srv := newTestServer(t, opts...)
	if err := srv.LoadKeysFile(samplePath); err != nil {
		t.Fatalf("load sample keys: %v", err)
	}
	return srv
}

// do sends req and returns the status, headers and body.
func do(t testing.TB, c *http.Client, req *http.Request) (int, http.Header, []byte) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp.StatusCode, resp.Header, body
}

// tokenRequest builds an API request with testToken.
func tokenRequest(t testing.TB, srv *Server, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, srv.ActionURL(), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentTypeJSON)
	req.Header.Set(HeaderAuthToken, testToken)
	return req
}

// post sends body with testToken.
func post(t testing.TB, srv *Server, body string) (int, http.Header, []byte) {
	t.Helper()
	return do(t, srv.Client(), tokenRequest(t, srv, body))
}

// list sends a filter request and decodes a 200 answer.
func list(t testing.TB, srv *Server, body string) listResponse {
	t.Helper()
	status, _, b := post(t, srv, body)
	if status != http.StatusOK {
		t.Fatalf("status %d, body %s", status, b)
	}
	var l listResponse
	if err := json.Unmarshal(b, &l); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	if l.TotalCount == nil {
		t.Fatalf("no total_count in %s", b)
	}
	return l
}

// listAll pages through a filter with the given limit and extra body fields; it returns the ids
// in order and the number of calls.
func listAll(t testing.TB, srv *Server, limit int, extra string) ([]string, int) {
	t.Helper()
	var ids []string
	calls := 0
	for offset := 0; ; {
		body := fmt.Sprintf(`{"action":"filter","limit":"%d","offset":"%d"%s}`, limit, offset, extra)
		l := list(t, srv, body)
		calls++
		ids = append(ids, l.ids()...)
		offset += len(l.Resources)
		if len(l.Resources) == 0 || offset >= *l.TotalCount {
			return ids, calls
		}
	}
}

// errorOf decodes a KMS error body.
func errorOf(t testing.TB, body []byte) ErrorDetail {
	t.Helper()
	var e ErrorBody
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("not a KMS error body: %s: %v", body, err)
	}
	return e.Error
}

// signOpts says how signedRequest signs.
type signOpts struct {
	ak, sk, securityToken string
	date                  time.Time
	signHost              bool
}

// signedRequest builds an API request signed by the official signer, as an SDK client would.
func signedRequest(t testing.TB, srv *Server, body string, o signOpts) *http.Request {
	t.Helper()
	u, err := url.Parse(srv.ActionURL())
	if err != nil {
		t.Fatal(err)
	}
	b := request.NewHttpRequestBuilder().
		WithEndpoint(srv.URL).
		WithPath(u.Path).
		WithMethod(http.MethodPost).
		AddHeaderParam("Content-Type", contentTypeJSON).
		AddHeaderParam("X-Project-Id", srv.ProjectID()).
		AddHeaderParam(signer.HeaderXDate, o.date.UTC().Format(signer.BasicDateFormat)).
		WithBody("json", body)
	if o.securityToken != "" {
		b.AddHeaderParam(HeaderSecurityToken, o.securityToken)
	}
	if o.signHost {
		b.AddHeaderParam("Host", u.Host)
	}
	sreq := b.Build()
	extra, err := signer.Sign(sreq, o.ak, o.sk)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	req, err := http.NewRequest(http.MethodPost, srv.ActionURL(), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range sreq.GetHeaderParams() {
		if k != "Host" {
			req.Header.Set(k, v)
		}
	}
	for k, v := range extra {
		req.Header.Set(k, v)
	}
	return req
}
