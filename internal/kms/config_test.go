package kms

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestEndpointForRegion(t *testing.T) {
	for region, want := range map[string]string{
		"cn-north-4":     "https://kms.cn-north-4.myhuaweicloud.com",
		"ap-southeast-1": "https://kms.ap-southeast-1.myhuaweicloud.com",
		"eu-west-101":    "https://kms.eu-west-101.myhuaweicloud.eu",
		"eu-west-0":      "https://kms.eu-west-0.myhuaweicloud.com",
	} {
		got, err := EndpointForRegion(region)
		if err != nil || got != want {
			t.Errorf("EndpointForRegion(%q) = %q, %v; want %q", region, got, err, want)
		}
	}
	for _, region := range []string{"", "CN-NORTH-4", "evil.com/x", "a..b", "-a", "a b"} {
		if _, err := EndpointForRegion(region); err == nil {
			t.Errorf("EndpointForRegion(%q): want error", region)
		}
	}
}

var validConfig = Config{Region: "cn-north-4", ProjectID: "0123456789abcdef", Credentials: Credentials{Token: "tok"}}

func TestNewDefaults(t *testing.T) {
	c, err := New(validConfig)
	if err != nil {
		t.Fatal(err)
	}
	s := c.s
	if s.baseURL.String() != "https://kms.cn-north-4.myhuaweicloud.com" || s.pageSize != MaxPageSize ||
		s.timeout != 10*time.Second || s.retry.MaxAttempts != 4 || s.retry.BaseDelay != 200*time.Millisecond ||
		s.retry.MaxDelay != 5*time.Second || s.retry.MaxRetryAfter != 10*time.Second {
		t.Errorf("defaults: %+v %+v", s, s.retry)
	}
	tr, ok := s.httpClient.Transport.(*http.Transport)
	if !ok || tr.TLSClientConfig == nil || tr.TLSClientConfig.InsecureSkipVerify {
		t.Errorf("default transport must verify TLS: %#v", s.httpClient.Transport)
	}
	if tr == http.DefaultTransport {
		t.Error("the default transport must be a clone, not http.DefaultTransport")
	}
}

func TestNewEndpointOverride(t *testing.T) {
	cfg := validConfig
	cfg.Region = ""
	cfg.Endpoint = "https://kms.internal.example:8443/proxy/"
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.s.baseURL.String(); got != "https://kms.internal.example:8443/proxy" {
		t.Errorf("base URL %q", got)
	}
}

func TestNewValidation(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		want   []string
	}{
		{"project", func(c *Config) { c.ProjectID = "" }, []string{"projectId is required"}},
		{"project chars", func(c *Config) { c.ProjectID = "a/b" }, []string{"projectId: must contain only"}},
		{"region", func(c *Config) { c.Region = "" }, []string{"region or endpoint is required"}},
		{"bad region", func(c *Config) { c.Region = "x.y" }, []string{`region "x.y"`}},
		{"endpoint", func(c *Config) { c.Endpoint = "ftp://x" }, []string{`endpoint "ftp://x"`}},
		{"endpoint creds", func(c *Config) { c.Endpoint = "https://u:p@x" }, []string{"without credentials"}},
		{"no credentials", func(c *Config) { c.Credentials = Credentials{} }, []string{"credentials: token or accessKey and secretKey are required"}},
		{"ak without sk", func(c *Config) { c.Credentials = Credentials{AccessKey: "AK"} }, []string{"credentials: secretKey is required with accessKey"}},
		{"sk without ak", func(c *Config) { c.Credentials = Credentials{SecretKey: "SK"} }, []string{"credentials: accessKey is required with secretKey"}},
		{"page size", func(c *Config) { c.PageSize = 1001 }, []string{"pageSize: must be between 1 and 1000, got 1001"}},
		{"negative page size", func(c *Config) { c.PageSize = -1 }, []string{"pageSize: must be between 1 and 1000, got -1"}},
		{"timeout", func(c *Config) { c.RequestTimeout = -time.Second }, []string{"requestTimeout: must not be negative"}},
		{"attempts", func(c *Config) { c.Retry.MaxAttempts = -1 }, []string{"retry.maxAttempts: must not be negative"}},
		{"delays", func(c *Config) { c.Retry.MaxDelay = -1 }, []string{"retry: delays must not be negative"}},
		{"http client and transport", func(c *Config) { c.HTTPClient = &http.Client{}; c.Transport = http.DefaultTransport },
			[]string{"httpClient: cannot be combined"}},
		{"ca bundle garbage", func(c *Config) { c.CABundle = []byte("not pem") }, []string{"caBundle: no PEM certificate found"}},
		{"ca bundle with custom round tripper", func(c *Config) {
			c.CABundle = []byte("x")
			c.Transport = roundTripFunc(func(*http.Request) (*http.Response, error) { return nil, nil })
		}, []string{"caBundle: cannot be combined"}},
		{"several at once", func(c *Config) { c.ProjectID = ""; c.PageSize = 5000 },
			[]string{"projectId is required", "pageSize: must be between"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := validConfig
			tt.modify(&cfg)
			_, err := New(cfg)
			if err == nil {
				t.Fatal("want error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %q, want substring %q", err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), "kms: invalid config: ") {
				t.Errorf("err = %q lacks prefix", err)
			}
		})
	}
}

func TestNewNeverPrintsSecrets(t *testing.T) {
	cfg := validConfig
	cfg.ProjectID = ""
	cfg.Credentials = Credentials{AccessKey: "AKVALUE", SecretKey: "SKSECRETVALUE", SecurityToken: "STSSECRET"}
	_, err := New(cfg)
	if err == nil || strings.Contains(err.Error(), "SKSECRETVALUE") || strings.Contains(err.Error(), "STSSECRET") {
		t.Errorf("err = %v", err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
