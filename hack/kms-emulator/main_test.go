package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
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

	t.Setenv("KMS_EMULATOR_SECRET_KEY", "")
	for _, args := range [][]string{
		{"--access-key", "ak-without-sk"},
		{"--tls-cert", "cert.pem"},
		{"stray"},
		{"--no-such-flag"},
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
