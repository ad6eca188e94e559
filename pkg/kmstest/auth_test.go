package kmstest

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

const countBody = `{"action":"count"}`

func TestTokenAuth(t *testing.T) {
	srv := newSampleServer(t, WithToken("expired-token", "removed-token"))
	srv.ExpireToken("expired-token")
	srv.RemoveToken("removed-token")
	tests := []struct {
		name   string
		header map[string]string
		code   string // "" = 200
	}{
		{"valid token", map[string]string{HeaderAuthToken: testToken}, ""},
		{"no credentials", nil, CodeTokenMissing},
		{"empty token", map[string]string{HeaderAuthToken: ""}, CodeTokenMissing},
		{"unknown token", map[string]string{HeaderAuthToken: "guess"}, CodeTokenInvalid},
		{"removed token", map[string]string{HeaderAuthToken: "removed-token"}, CodeTokenInvalid},
		{"expired token", map[string]string{HeaderAuthToken: "expired-token"}, CodeTokenExpired},
		{"malformed Authorization", map[string]string{"Authorization": "Bearer abc"}, CodeTokenInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := tokenRequest(t, srv, countBody)
			req.Header.Del(HeaderAuthToken)
			for k, v := range tt.header {
				req.Header[k] = []string{v}
			}
			status, _, body := do(t, srv.Client(), req)
			checkAnswer(t, status, body, tt.code)
		})
	}
}

func TestAuthDisabled(t *testing.T) {
	srv := newSampleServer(t, WithAuthDisabled())
	req := tokenRequest(t, srv, countBody)
	req.Header.Del(HeaderAuthToken)
	status, _, body := do(t, srv.Client(), req)
	checkAnswer(t, status, body, "")
	srv.SetAuthDisabled(false)
	status, _, body = do(t, srv.Client(), tokenRequest(t, srv, countBody))
	checkAnswer(t, status, body, "")
	req = tokenRequest(t, srv, countBody)
	req.Header.Del(HeaderAuthToken)
	status, _, body = do(t, srv.Client(), req)
	checkAnswer(t, status, body, CodeTokenMissing)
}

// checkAnswer asserts a 200 (code "") or a 403 with the KMS code.
func checkAnswer(t *testing.T, status int, body []byte, code string) {
	t.Helper()
	if code == "" {
		if status != http.StatusOK {
			t.Fatalf("status %d, body %s; want 200", status, body)
		}
		return
	}
	if status != http.StatusForbidden {
		t.Fatalf("status %d, body %s; want 403", status, body)
	}
	if e := errorOf(t, body); e.Code != code {
		t.Errorf("code %s (%s), want %s", e.Code, e.Message, code)
	}
}

func TestSignatureAuth(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	const (
		ak, sk       = "AKEMULATOR0001", "secret-key-0001"
		tmpAK, tmpSK = "AKTEMPORARY0002", "secret-key-0002"
		secToken     = "security-token-0002"
	)
	srv := newSampleServer(t, WithClock(func() time.Time { return now }),
		WithAKSK(ak, sk, ""), WithAKSK(tmpAK, tmpSK, secToken))
	ok := signOpts{ak: ak, sk: sk, date: now}
	tmp := signOpts{ak: tmpAK, sk: tmpSK, securityToken: secToken, date: now}
	with := func(o signOpts, f func(*signOpts)) signOpts { f(&o); return o }

	tests := []struct {
		name   string
		opts   signOpts
		tamper func(*http.Request)
		code   string
	}{
		{"valid", ok, nil, ""},
		{"valid with Host signed", with(ok, func(o *signOpts) { o.signHost = true }), nil, ""},
		{"date 14m in the past", with(ok, func(o *signOpts) { o.date = now.Add(-14 * time.Minute) }), nil, ""},
		{"date 14m in the future", with(ok, func(o *signOpts) { o.date = now.Add(14 * time.Minute) }), nil, ""},
		{"date 16m in the past", with(ok, func(o *signOpts) { o.date = now.Add(-16 * time.Minute) }), nil, CodeTokenInvalid},
		{"date 16m in the future", with(ok, func(o *signOpts) { o.date = now.Add(16 * time.Minute) }), nil, CodeTokenInvalid},
		{"bad secret key", with(ok, func(o *signOpts) { o.sk = "wrong" }), nil, CodeTokenInvalid},
		{"unknown access key", with(ok, func(o *signOpts) { o.ak = "AKUNKNOWN" }), nil, CodeTokenInvalid},
		{"tampered body", ok, func(r *http.Request) { setBody(r, `{"action":"filter"}`) }, CodeTokenInvalid},
		{"tampered signed header", ok, func(r *http.Request) { r.Header.Set("X-Project-Id", "other") }, CodeTokenInvalid},
		{"signed header removed", ok, func(r *http.Request) { r.Header.Del("X-Project-Id") }, CodeTokenInvalid},
		{"tampered date", ok, func(r *http.Request) {
			r.Header.Set(HeaderSdkDate, now.Add(time.Second).Format("20060102T150405Z"))
		}, CodeTokenInvalid},
		{"unparsable date", ok, func(r *http.Request) { r.Header.Set(HeaderSdkDate, "yesterday") }, CodeTokenInvalid},
		{"tampered signature", ok, func(r *http.Request) {
			a := r.Header.Get("Authorization")
			r.Header.Set("Authorization", a[:len(a)-1]+flipHex(a[len(a)-1]))
		}, CodeTokenInvalid},
		{"truncated Authorization", ok, func(r *http.Request) {
			a := r.Header.Get("Authorization")
			r.Header.Set("Authorization", a[:strings.Index(a, ", Signature=")])
		}, CodeTokenInvalid},
		{"wrong content hash", ok, func(r *http.Request) { r.Header.Set(headerContentSha256, strings.Repeat("0", 64)) }, CodeTokenInvalid},
		{"security token with permanent AK", ok, func(r *http.Request) { r.Header.Set(HeaderSecurityToken, "x") }, CodeTokenInvalid},
		{"temporary credentials", tmp, nil, ""},
		{"temporary without security token", with(tmp, func(o *signOpts) { o.securityToken = "" }), nil, CodeTokenMissing},
		{"temporary with wrong security token", with(tmp, func(o *signOpts) { o.securityToken = "other" }), nil, CodeTokenInvalid},
		{"temporary with swapped security token", tmp, func(r *http.Request) { r.Header.Set(HeaderSecurityToken, "other") }, CodeTokenInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := signedRequest(t, srv, countBody, tt.opts)
			if tt.tamper != nil {
				tt.tamper(req)
			}
			status, _, body := do(t, srv.Client(), req)
			checkAnswer(t, status, body, tt.code)
		})
	}
	if recs := srv.Requests(); recs[0].Auth != AuthAKSK || recs[0].AccessKey != ak {
		t.Errorf("first record auth = %q %q, want aksk %s", recs[0].Auth, recs[0].AccessKey, ak)
	}
}

func TestSignatureAfterRemoveAKSK(t *testing.T) {
	srv := newSampleServer(t, WithAKSK("AK1", "SK1", ""))
	o := signOpts{ak: "AK1", sk: "SK1", date: time.Now()}
	status, _, body := do(t, srv.Client(), signedRequest(t, srv, countBody, o))
	checkAnswer(t, status, body, "")
	srv.RemoveAKSK("AK1")
	status, _, body = do(t, srv.Client(), signedRequest(t, srv, countBody, o))
	checkAnswer(t, status, body, CodeTokenInvalid)
}

func TestLogsHoldNoSecrets(t *testing.T) {
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	srv := newSampleServer(t, WithLogger(logger), WithAKSK("AKLOG", "SKLOGSECRET", "STSLOGSECRET"))
	post(t, srv, countBody)
	req := signedRequest(t, srv, countBody, signOpts{ak: "AKLOG", sk: "SKLOGSECRET", securityToken: "STSLOGSECRET", date: time.Now()})
	signature := req.Header.Get("Authorization")[strings.Index(req.Header.Get("Authorization"), "Signature=")+len("Signature="):]
	status, _, body := do(t, srv.Client(), req)
	checkAnswer(t, status, body, "")
	out := logs.String()
	if strings.Count(out, "kms request") != 2 || !strings.Contains(out, "auth=aksk") {
		t.Fatalf("want two request lines, got:\n%s", out)
	}
	for _, secret := range []string{testToken, "SKLOGSECRET", "STSLOGSECRET", signature} {
		if strings.Contains(out, secret) {
			t.Errorf("log holds a secret %q:\n%s", secret, out)
		}
	}
}

func setBody(r *http.Request, body string) {
	r.Body = io.NopCloser(strings.NewReader(body))
	r.ContentLength = int64(len(body))
}

func flipHex(c byte) string {
	if c == '0' {
		return "1"
	}
	return "0"
}

func TestTemporaryCredentials(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC))
	now := clock.Now()
	srv := newSampleServer(t, WithClock(clock.Now))
	srv.AddTemporaryToken("tmp-token", now.Add(time.Minute))
	srv.AddTemporaryAKSK("AKTMP", "SKTMPSECRET", "STSTMPSECRET", now.Add(2*time.Minute))
	tests := []struct {
		at                time.Duration
		tokenOK, akskOK   bool
		tokenCode, akCode string
	}{
		{0, true, true, "", ""},
		{59 * time.Second, true, true, "", ""},
		{time.Minute, false, true, CodeTokenExpired, ""},
		{2 * time.Minute, false, false, CodeTokenExpired, CodeTokenExpired},
		{48 * time.Hour, false, false, CodeTokenExpired, CodeTokenExpired},
	}
	for _, tt := range tests {
		at := now.Add(tt.at)
		clock.SetTime(at)
		status, _, body := do(t, srv.Client(), withToken(tokenRequest(t, srv, countBody), "tmp-token"))
		checkAnswer(t, status, body, tt.tokenCode)
		signed := signedRequest(t, srv, countBody, signOpts{ak: "AKTMP", sk: "SKTMPSECRET", securityToken: "STSTMPSECRET", date: at})
		status, _, body = do(t, srv.Client(), signed)
		checkAnswer(t, status, body, tt.akCode)
		for _, secret := range []string{"tmp-token", "SKTMPSECRET", "STSTMPSECRET"} {
			if strings.Contains(string(body), secret) {
				t.Errorf("the answer holds the secret %q: %s", secret, body)
			}
		}
		if tt.akCode != "" && !strings.Contains(errorOf(t, body).Message, "temporary credentials") {
			t.Errorf("message %q", errorOf(t, body).Message)
		}
	}
	// Credentials long expired are forgotten once new ones are added.
	srv.AddTemporaryToken("fresh", clock.Now().Add(time.Hour))
	status, _, body := do(t, srv.Client(), withToken(tokenRequest(t, srv, countBody), "tmp-token"))
	checkAnswer(t, status, body, CodeTokenInvalid)
}

// withToken makes req send token instead of testToken.
func withToken(req *http.Request, token string) *http.Request {
	req.Header.Set(HeaderAuthToken, token)
	return req
}
