package kms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth/signer"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/request"
)

const (
	contentType = "application/json;charset=UTF-8"
	userAgent   = "kms-key-sync"
	// actionPath follows the endpoint (and its path prefix, if any); %s is the project id.
	actionPath = "/v1.0/%s/kms/resource_instances/action"

	maxResponseBytes = 32 << 20
	maxErrorBytes    = 64 << 10
)

// attempt sends one request with the per-request timeout, reports it to the Observer and the
// debug log, and hands a 2xx body to decode. It returns a *TransportError when no answer arrived,
// an *APIError for a non-2xx answer, or decode's error.
func (c *Client) attempt(ctx context.Context, op string, body []byte, decode func([]byte) error) error {
	reqCtx, cancel := context.WithTimeout(ctx, c.s.timeout)
	defer cancel()
	req, err := c.newRequest(reqCtx, body)
	if err != nil {
		return err
	}
	start := c.now()
	status, err := c.roundTrip(req, op, decode)
	elapsed := c.now().Sub(start)
	if ctx.Err() != nil {
		// The caller gave up; this is neither the server's fault nor the network's.
		return fmt.Errorf("%s: %w", operationName(op), context.Cause(ctx))
	}
	var terr *TransportError
	if errors.As(err, &terr) && errors.Is(reqCtx.Err(), context.DeadlineExceeded) {
		terr.Err = fmt.Errorf("timed out after %s: %w", c.s.timeout, terr.Err)
	}
	c.s.observer.ObserveRequest(op, outcomeOf(status, err), elapsed)
	c.logAttempt(req, op, status, elapsed, err)
	return err
}

// roundTrip performs req and returns the HTTP status (0 when none) and the outcome.
func (c *Client) roundTrip(req *http.Request, op string, decode func([]byte) error) (int, error) {
	resp, err := c.s.httpClient.Do(req)
	if err != nil {
		return 0, &TransportError{Operation: op, Err: stripURL(err)}
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBytes))
		return resp.StatusCode, newAPIError(op, resp, data, c.now(), c.s.secretWords)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return 0, &TransportError{Operation: op, Err: fmt.Errorf("read response: %w", err)}
	}
	if len(data) > maxResponseBytes {
		return resp.StatusCode, &DecodeError{Err: fmt.Errorf("response body exceeds %d bytes", maxResponseBytes)}
	}
	if err := decode(data); err != nil {
		return resp.StatusCode, fmt.Errorf("%s: %w", operationName(op), err)
	}
	return resp.StatusCode, nil
}

// stripURL drops the *url.Error wrapper, whose text repeats method and URL, and keeps its cause.
func stripURL(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}

// newRequest builds the POST with its authentication headers. With AK/SK the official signer of
// the Huawei Cloud Go SDK signs exactly the bytes of body (it hashes a string body verbatim).
func (c *Client) newRequest(ctx context.Context, body []byte) (*http.Request, error) {
	path := c.s.baseURL.Path + fmt.Sprintf(actionPath, c.s.projectID)
	u := *c.s.baseURL
	u.Path = path
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("kms: build request: %w", err)
	}
	headers, err := c.authHeaders(path, body)
	if err != nil {
		return nil, err
	}
	for name, value := range headers {
		req.Header.Set(name, value)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", userAgent)
	return req, nil
}

// authHeaders returns Content-Type, X-Project-Id and the credential headers.
func (c *Client) authHeaders(path string, body []byte) (map[string]string, error) {
	creds := c.s.creds
	headers := map[string]string{
		"Content-Type": contentType,
		"X-Project-Id": c.s.projectID,
	}
	if creds.Token != "" {
		headers["X-Auth-Token"] = creds.Token
		return headers, nil
	}
	if creds.SecurityToken != "" {
		headers["X-Security-Token"] = creds.SecurityToken
	}
	headers[signer.HeaderXDate] = c.now().UTC().Format(signer.BasicDateFormat)
	signed, err := sign(c.s.baseURL.Scheme+"://"+c.s.baseURL.Host, path, headers, body, creds)
	if err != nil {
		return nil, err
	}
	for name, value := range signed {
		headers[name] = value
	}
	return headers, nil
}

// sign runs the SDK signer over the request and returns the headers it adds (X-Sdk-Date,
// Authorization). It refuses to sign when the signer would hash other bytes than body.
func sign(endpoint, path string, headers map[string]string, body []byte, creds Credentials) (map[string]string, error) {
	b := request.NewHttpRequestBuilder().
		WithEndpoint(endpoint).
		WithPath(path).
		WithMethod(http.MethodPost).
		WithBody("", string(body))
	for name, value := range headers {
		b.AddHeaderParam(name, value)
	}
	sdkReq := b.Build()
	if hashed, err := sdkReq.GetBodyToBytes(); err != nil || !bytes.Equal(hashed.Bytes(), body) {
		return nil, errors.New("kms: sign request: signed body differs from sent body")
	}
	signed, err := signer.Sign(sdkReq, creds.AccessKey, creds.SecretKey)
	if err != nil {
		// The signer's messages name missing fields, never their values.
		return nil, fmt.Errorf("kms: sign request: %w", err)
	}
	return signed, nil
}

// logAttempt writes one debug line per request; credential headers are redacted.
func (c *Client) logAttempt(req *http.Request, op string, status int, elapsed time.Duration, err error) {
	log := c.s.logger.V(1)
	if !log.Enabled() {
		return
	}
	kv := []any{"operation", op, "method", req.Method, "url", req.URL.String(), "status", status,
		"duration", elapsed, "requestHeaders", redactHeaders(req.Header)}
	if err != nil {
		kv = append(kv, "error", scrub(err.Error(), c.s.secretWords))
	}
	log.Info("kms request", kv...)
}
