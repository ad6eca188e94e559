package kms

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/go-logr/logr"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultRequestTimeout = 10 * time.Second
	DefaultMaxAttempts    = 4
	DefaultBaseDelay      = 200 * time.Millisecond
	DefaultMaxDelay       = 5 * time.Second
	DefaultMaxRetryAfter  = 10 * time.Second
)

// Config configures a Client. Zero fields take the defaults above.
type Config struct {
	// Region derives the endpoint (see EndpointForRegion) when Endpoint is empty.
	Region string
	// Endpoint overrides the derived endpoint, e.g. for dedicated clouds or an emulator:
	// an absolute http or https URL, optionally with a path prefix.
	Endpoint string
	// ProjectID is the project of the region; it is part of the request path.
	ProjectID string
	// Credentials: an IAM Token (sent as X-Auth-Token), or AccessKey and SecretKey (requests are
	// signed with SDK-HMAC-SHA256), with SecurityToken for temporary credentials. Token wins when
	// both are set.
	Credentials Credentials
	// PageSize is the limit of each filter request, 1..MaxPageSize; default MaxPageSize.
	PageSize int
	// RequestTimeout bounds each HTTP request, body included; default 10s.
	RequestTimeout time.Duration
	// Retry bounds the retries of each request.
	Retry RetryPolicy
	// HTTPClient is used as is when set (its Transport, timeouts and redirect policy are the
	// caller's). It cannot be combined with Transport or CABundle.
	HTTPClient *http.Client
	// Transport replaces the default transport. An *http.Transport is cloned and gets CABundle;
	// any other RoundTripper cannot be combined with CABundle.
	Transport http.RoundTripper
	// CABundle holds PEM certificates trusted in addition to the system roots.
	CABundle []byte
	// Observer is told about every request; nil means none.
	Observer Observer
	// Logger receives debug output at V(1): method, URL, status, duration and headers with
	// credentials redacted. The zero Logger discards.
	Logger logr.Logger
}

// RetryPolicy bounds the retries of one request. Retries happen only for retryable errors
// (see IsRetryable). The delay before retry n (n = 1, 2, ...) is drawn uniformly from
// [0, min(MaxDelay, BaseDelay*2^(n-1))] ("full jitter"); a Retry-After of the server, capped at
// MaxRetryAfter, is waited at least. Every wait ends early when the context ends.
type RetryPolicy struct {
	// MaxAttempts counts the first try; 1 disables retries. Default 4.
	MaxAttempts int
	// BaseDelay defaults to 200ms, MaxDelay to 5s, MaxRetryAfter to 10s.
	BaseDelay     time.Duration
	MaxDelay      time.Duration
	MaxRetryAfter time.Duration
	// Limit, when set, is asked before each retry; a positive answer overrides MaxAttempts. A
	// listing shared by several callers grows with it as patient as the most patient of them.
	Limit func() int
}

// maxAttempts is the number of attempts allowed now.
func (p RetryPolicy) maxAttempts() int {
	if p.Limit != nil {
		if n := p.Limit(); n > 0 {
			return n
		}
	}
	return p.MaxAttempts
}

var regionPattern = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)

// projectIDPattern keeps the project id a single path segment that needs no escaping, so the
// path that is signed is the path that is sent.
var projectIDPattern = regexp.MustCompile(`^[A-Za-z0-9._~-]+$`)

// EndpointForRegion returns the public KMS endpoint of a Huawei Cloud region:
// https://kms.{region}.myhuaweicloud.com, except eu-west-101 which lives under
// myhuaweicloud.eu.
func EndpointForRegion(region string) (string, error) { return ServiceEndpoint("kms", region) }

// ServiceEndpoint returns the public endpoint of a Huawei Cloud service, such as kms or iam, in a
// region: https://{service}.{region}.myhuaweicloud.com, or myhuaweicloud.eu for eu-west-101.
func ServiceEndpoint(service, region string) (string, error) {
	if !regionPattern.MatchString(region) {
		return "", fmt.Errorf("region %q: must be lower-case letters, digits and dashes", region)
	}
	if region == "eu-west-101" {
		return "https://" + service + ".eu-west-101.myhuaweicloud.eu", nil
	}
	return "https://" + service + "." + region + ".myhuaweicloud.com", nil
}

// settings is a validated Config with defaults applied.
type settings struct {
	baseURL     *url.URL // scheme and host, plus an optional path prefix without trailing slash
	projectID   string
	creds       Credentials
	pageSize    int
	timeout     time.Duration
	retry       RetryPolicy
	httpClient  *http.Client
	observer    Observer
	logger      logr.Logger
	secretWords []string
}

// validate checks cfg and applies defaults. Every problem is reported, each naming its field.
func (cfg Config) validate() (settings, error) {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	s := settings{
		projectID: cfg.ProjectID,
		creds:     cfg.Credentials,
		pageSize:  orDefault(cfg.PageSize, MaxPageSize),
		timeout:   orDefault(cfg.RequestTimeout, DefaultRequestTimeout),
		retry:     cfg.Retry.withDefaults(),
		observer:  cfg.Observer,
		logger:    cfg.Logger,
	}
	if s.observer == nil {
		s.observer = nopObserver{}
	}
	u, err := endpointURL(cfg.Region, cfg.Endpoint)
	if err != nil {
		bad("%v", err)
	}
	s.baseURL = u
	switch {
	case cfg.ProjectID == "":
		bad("projectId is required")
	case !projectIDPattern.MatchString(cfg.ProjectID):
		bad("projectId: must contain only letters, digits and ._~-")
	}
	if err := checkCredentials(cfg.Credentials); err != nil {
		bad("%v", err)
	}
	if cfg.PageSize < 0 || cfg.PageSize > MaxPageSize {
		bad("pageSize: must be between 1 and %d, got %d", MaxPageSize, cfg.PageSize)
	}
	if cfg.RequestTimeout < 0 {
		bad("requestTimeout: must not be negative")
	}
	problems = append(problems, cfg.Retry.problems()...)
	client, err := cfg.buildHTTPClient()
	if err != nil {
		bad("%v", err)
	}
	s.httpClient = client
	s.secretWords = secretWords(cfg.Credentials)
	if len(problems) > 0 {
		return settings{}, fmt.Errorf("kms: invalid config: %s", strings.Join(problems, "; "))
	}
	return s, nil
}

func orDefault[T int | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

func endpointURL(region, endpoint string) (*url.URL, error) {
	if endpoint == "" {
		if region == "" {
			return nil, errors.New("region or endpoint is required")
		}
		e, err := EndpointForRegion(region)
		if err != nil {
			return nil, err
		}
		endpoint = e
	}
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" ||
		u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("endpoint %q: must be an absolute http or https URL without credentials, query or fragment", endpoint)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

func checkCredentials(c Credentials) error {
	switch {
	case c.Token != "":
		return nil
	case c.AccessKey == "" && c.SecretKey == "":
		return errors.New("credentials: token or accessKey and secretKey are required")
	case c.AccessKey == "":
		return errors.New("credentials: accessKey is required with secretKey")
	case c.SecretKey == "":
		return errors.New("credentials: secretKey is required with accessKey")
	}
	return nil
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	p.MaxAttempts = orDefault(p.MaxAttempts, DefaultMaxAttempts)
	p.BaseDelay = orDefault(p.BaseDelay, DefaultBaseDelay)
	p.MaxDelay = orDefault(p.MaxDelay, DefaultMaxDelay)
	p.MaxRetryAfter = orDefault(p.MaxRetryAfter, DefaultMaxRetryAfter)
	return p
}

func (p RetryPolicy) problems() []string {
	var out []string
	if p.MaxAttempts < 0 {
		out = append(out, "retry.maxAttempts: must not be negative")
	}
	if p.BaseDelay < 0 || p.MaxDelay < 0 || p.MaxRetryAfter < 0 {
		out = append(out, "retry: delays must not be negative")
	}
	return out
}

// buildHTTPClient returns the client to send requests with. TLS is always verified.
func (cfg Config) buildHTTPClient() (*http.Client, error) {
	if cfg.HTTPClient != nil {
		if cfg.Transport != nil || len(cfg.CABundle) > 0 {
			return nil, errors.New("httpClient: cannot be combined with transport or caBundle")
		}
		return cfg.HTTPClient, nil
	}
	rt := cfg.Transport
	if rt == nil {
		rt = defaultTransport()
	}
	if len(cfg.CABundle) > 0 {
		base, ok := rt.(*http.Transport)
		if !ok {
			return nil, errors.New("caBundle: cannot be combined with a transport that is not an *http.Transport")
		}
		t, err := withCABundle(base, cfg.CABundle)
		if err != nil {
			return nil, err
		}
		rt = t
	}
	return &http.Client{
		Transport: rt,
		// A redirect would resend a signed request elsewhere; report it instead.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// defaultTransport is a clone of http.DefaultTransport that insists on TLS 1.2 or later.
func defaultTransport() http.RoundTripper {
	t, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		return http.DefaultTransport
	}
	t = t.Clone()
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	return t
}

// withCABundle clones t and trusts the PEM certificates of bundle besides the system roots.
func withCABundle(t *http.Transport, bundle []byte) (*http.Transport, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(bundle) {
		return nil, errors.New("caBundle: no PEM certificate found")
	}
	t = t.Clone()
	if t.TLSClientConfig == nil {
		t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	t.TLSClientConfig.RootCAs = pool
	t.TLSClientConfig.InsecureSkipVerify = false
	return t, nil
}

// secretWords lists the secrets that must never leave the client in an error or a log line.
func secretWords(c Credentials) []string {
	var out []string
	for _, w := range []string{c.SecretKey, c.Token, c.SecurityToken} {
		if len(w) >= 4 {
			out = append(out, w)
		}
	}
	return out
}

// NewTransport returns the transport a Config would build, for sharing one connection pool
// between many clients: TLS 1.2 or later, verified, trusting caBundle (PEM, optional) besides the
// system roots.
func NewTransport(caBundle []byte) (*http.Transport, error) {
	t := defaultTransport().(*http.Transport)
	if len(caBundle) == 0 {
		return t, nil
	}
	return withCABundle(t, caBundle)
}
