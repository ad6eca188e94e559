package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth/signer"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/request"

	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/iamtest"
)

func TestParseFlags(t *testing.T) {
	t.Setenv("KMS_EMULATOR_TOKEN", "env-token")
	t.Setenv("KMS_EMULATOR_ACCESS_KEY", "env-ak")
	t.Setenv("KMS_EMULATOR_SECRET_KEY", "env-sk")
	c, err := parseFlags([]string{"--token", "flag-token", "--shape", "example", "--project-id", "p1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.tokens, ",") != "flag-token,env-token" || c.accessKey != "env-ak" || c.secretKey != "env-sk" ||
		c.projectID != "p1" || c.shape != "example" || c.listen != "127.0.0.1:8443" {
		t.Errorf("config = %+v", c)
	}
	if _, err := c.options(nil); err != nil {
		t.Errorf("options: %v", err)
	}
	if !c.iam || c.credentialLifetime != time.Hour || c.podIdentityToken != "" || c.nodeAgency {
		t.Errorf("IAM defaults: %+v", c)
	}
	t.Setenv("KMS_EMULATOR_POD_IDENTITY_TOKEN", "env-pod-token")
	c, err = parseFlags([]string{"--credential-lifetime", "10m", "--node-agency"}, io.Discard)
	if err != nil || c.credentialLifetime != 10*time.Minute || !c.nodeAgency || c.podIdentityToken != "env-pod-token" {
		t.Errorf("IAM flags: %+v, %v", c, err)
	}
	t.Setenv("KMS_EMULATOR_POD_IDENTITY_TOKEN", "")

	t.Setenv("KMS_EMULATOR_SECRET_KEY", "")
	for _, args := range [][]string{
		{"--access-key", "ak-without-sk"},
		{"--tls-cert", "cert.pem"},
		{"stray"},
		{"--no-such-flag"},
		{"--credential-lifetime", "0s"},
		{"--iam=false", "--node-agency"},
		{"--iam=false", "--pod-identity-token", "x"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%v): no error", args)
		}
	}
	if _, err := parseFlags([]string{"--help"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
	if _, err := (config{shape: "xml"}).options(nil); err == nil {
		t.Error("bad shape accepted")
	}
}

func TestRun(t *testing.T) {
	t.Setenv("KMS_EMULATOR_TOKEN", "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, w := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--keys", "sample-keys.json", "--token", "tok", "--quiet"}, w, io.Discard)
		_ = w.Close()
	}()
	lines := bufio.NewScanner(out)
	var apiURL string
	for lines.Scan() && apiURL == "" {
		if _, after, ok := strings.Cut(lines.Text(), "ListKmsByTags: POST "); ok {
			apiURL = after
		}
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	if apiURL == "" {
		t.Fatal("no URL printed")
	}

	req, err := http.NewRequest(http.MethodPost, apiURL, strings.NewReader(`{"action":"count"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Auth-Token", "tok")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != `{"total_count":8}` {
		t.Errorf("count: %d %s", resp.StatusCode, body)
	}
	adminURL := apiURL[:strings.Index(apiURL, "/v1.0/")] + "/admin/stats"
	resp, err = http.Get(adminURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("admin on the same port: %d", resp.StatusCode)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
}

func TestRunBadSeedFile(t *testing.T) {
	err := run(context.Background(), []string{"--listen", "127.0.0.1:0", "--keys", "missing.json"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Errorf("err = %v", err)
	}
}

// serveLocal sends a request to h and returns the status, headers and body.
func serveLocal(t *testing.T, h http.Handler, method, path, body string, header map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req := httptest.NewRequest(method, "http://kms.local"+path, strings.NewReader(body))
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Header(), rec.Body.Bytes()
}

// TestIAMThroughHandler runs the node agency flow through the binary's handler: a metadata
// token, the agency's credentials, then a KMS count signed with them.
func TestIAMThroughHandler(t *testing.T) {
	c, err := parseFlags([]string{"--node-agency", "--pod-identity-token", "pod-tok", "--credential-lifetime", "10m"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := c.options(nil)
	if err != nil {
		t.Fatal(err)
	}
	emu := kmstest.New(opts...)
	if err := emu.LoadKeysFile("sample-keys.json"); err != nil {
		t.Fatal(err)
	}
	iam := c.newIAM(emu, nil)
	api, admin := handlers(c, emu, iam)
	if admin != nil {
		t.Fatal("an admin listener without --admin-listen")
	}

	status, _, token := serveLocal(t, api, http.MethodPut, iamtest.PathMetadataToken, "", map[string]string{iamtest.HeaderMetadataTokenTTL: "21600"})
	if status != http.StatusOK {
		t.Fatalf("metadata token: %d %s", status, token)
	}
	status, _, body := serveLocal(t, api, http.MethodGet, iamtest.PathSecurityKey, "", map[string]string{iamtest.HeaderMetadataToken: string(token)})
	if status != http.StatusOK {
		t.Fatalf("securitykey: %d %s", status, body)
	}
	var got map[string]iamtest.TemporaryCredential
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	cred := got["credential"]
	exp, err := time.Parse(iamtest.TimeFormat, cred.ExpiresAt)
	if err != nil || time.Until(exp) > 10*time.Minute+time.Second || time.Until(exp) < 9*time.Minute {
		t.Errorf("expires_at %q (%v), want in 10m", cred.ExpiresAt, err)
	}

	// Sign a count with the temporary credentials.
	const countBody = `{"action":"count"}`
	sreq := request.NewHttpRequestBuilder().
		WithEndpoint("http://kms.local").
		WithPath(emu.ActionPath()).
		WithMethod(http.MethodPost).
		AddHeaderParam(kmstest.HeaderSdkDate, time.Now().UTC().Format(signer.BasicDateFormat)).
		AddHeaderParam(kmstest.HeaderSecurityToken, cred.SecurityToken).
		WithBody("json", countBody).
		Build()
	signed, err := signer.Sign(sreq, cred.Access, cred.Secret)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range sreq.GetHeaderParams() {
		signed[k] = v
	}
	status, _, body = serveLocal(t, api, http.MethodPost, emu.ActionPath(), countBody, signed)
	if status != http.StatusOK || string(body) != `{"total_count":8}` {
		t.Errorf("signed count: %d %s", status, body)
	}

	// Pod identity, and the IAM admin API on the same port.
	status, _, body = serveLocal(t, api, http.MethodPost, iamtest.PathPodIdentity, "{}", map[string]string{"Authorization": "pod-tok"})
	if status != http.StatusOK {
		t.Errorf("pod identity: %d %s", status, body)
	}
	status, _, body = serveLocal(t, api, http.MethodGet, iamtest.AdminPrefix+"stats", "", nil)
	var st iamtest.Stats
	if status != http.StatusOK || json.Unmarshal(body, &st) != nil ||
		st.MetadataTokens != 1 || st.MetadataCredentials != 1 || st.PodIdentityCredentials != 1 {
		t.Errorf("IAM stats: %d %s", status, body)
	}
	if status, _, body := serveLocal(t, api, http.MethodGet, "/admin/stats", "", nil); status != http.StatusOK {
		t.Errorf("KMS admin: %d %s", status, body)
	}
}

func TestHandlersAdminListenAndNoIAM(t *testing.T) {
	emu := kmstest.New()
	c := config{adminListen: "127.0.0.1:0", iam: true, credentialLifetime: time.Hour}
	api, admin := handlers(c, emu, c.newIAM(emu, nil))
	if admin == nil {
		t.Fatal("no admin handler")
	}
	for _, path := range []string{"/admin/stats", iamtest.AdminPrefix + "stats"} {
		if status, _, body := serveLocal(t, admin, http.MethodGet, path, "", nil); status != http.StatusOK {
			t.Errorf("admin listener %s: %d %s", path, status, body)
		}
		if status, _, _ := serveLocal(t, api, http.MethodGet, path, "", nil); status != http.StatusNotFound {
			t.Errorf("API listener serves %s: %d", path, status)
		}
	}
	if status, _, _ := serveLocal(t, api, http.MethodPut, iamtest.PathMetadataToken, "", map[string]string{iamtest.HeaderMetadataTokenTTL: "60"}); status != http.StatusOK {
		t.Errorf("IAM route with --admin-listen: %d", status)
	}

	c = config{iam: false}
	api, admin = handlers(c, emu, c.newIAM(emu, nil))
	if admin != nil {
		t.Error("admin handler without --admin-listen")
	}
	status, _, body := serveLocal(t, api, http.MethodPut, iamtest.PathMetadataToken, "", nil)
	if status != http.StatusNotFound || !strings.Contains(string(body), kmstest.CodeInvalidURL) {
		t.Errorf("--iam=false still serves IAM: %d %s", status, body)
	}
}
