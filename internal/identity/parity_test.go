package identity

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/iamtest"
)

func TestWorkloadIdentityExchangesUnscopedAsTheSDKDoes(t *testing.T) {
	w := newWorld(t)
	w.iam.RefuseScopedTokens(true)
	w.iam.Allow(testIdP, "system:serviceaccount:team:reader", w.kms.ProjectID())
	creds, err := w.broker.Credentials(context.Background(), w.identity("reader"))
	if err != nil {
		t.Fatalf("against an IAM that takes only unscoped exchanges: %v", err)
	}
	if n := w.list(t, creds); n != 2 {
		t.Errorf("listed %d keys, want 2", n)
	}
	if st := w.iam.Stats(); st.IDTokenExchanges != 1 || st.IDTokenRefusals != 0 {
		t.Errorf("stats = %+v, want one unscoped exchange and no refusal", st)
	}
}

func TestNodeAgencyContinuesWithoutASessionTokenOn404Or405(t *testing.T) {
	for _, status := range []int{http.StatusNotFound, http.StatusMethodNotAllowed} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			w := newWorld(t)
			w.iam.SetNodeAgency(w.kms.ProjectID())
			w.iam.SetMetadataTokenless(true)
			if status == http.StatusNotFound {
				w.iam.InjectFault(iamtest.Fault{Route: iamtest.RouteMetadataToken, Status: status})
			}
			creds, err := w.broker.Credentials(context.Background(), NodeAgency{})
			if err != nil {
				t.Fatalf("metadata token PUT answering %d: %v", status, err)
			}
			if n := w.list(t, creds); n != 2 {
				t.Errorf("listed %d keys, want 2", n)
			}
		})
	}
}

func TestNodeAgencyRetriesOnceWithANewSessionTokenAfterA401(t *testing.T) {
	w := newWorld(t)
	w.iam.SetNodeAgency(w.kms.ProjectID())
	w.iam.InjectFault(iamtest.Fault{Route: iamtest.RouteSecurityKey, Status: http.StatusUnauthorized, Count: 1})
	if _, err := w.broker.Credentials(context.Background(), NodeAgency{}); err != nil {
		t.Fatalf("after one 401 of securitykey: %v", err)
	}
	if st := w.iam.Stats(); st.MetadataTokens != 2 || st.MetadataCredentials != 1 {
		t.Errorf("stats = %+v, want a second session token and one credential", st)
	}

	// The agency message is final: no retry.
	w2 := newWorld(t)
	if _, err := w2.broker.Credentials(context.Background(), NodeAgency{}); err == nil || !strings.Contains(err.Error(), "no IAM agency") {
		t.Fatalf("err = %v, want the node without agency", err)
	}
	if st := w2.iam.Stats(); st.MetadataTokens != 1 {
		t.Errorf("metadata tokens = %d, want 1: the agency message is not retried", st.MetadataTokens)
	}
}

func TestIAMEndpointForRegionFollowsTheSDKsMap(t *testing.T) {
	for region, want := range map[string]string{
		"cn-north-4":     "https://iam.cn-north-4.myhuaweicloud.com",
		"ap-southeast-1": "https://iam.ap-southeast-1.myhuaweicloud.com",
		"eu-west-101":    "https://iam.eu-west-101.myhuaweicloud.eu",
		// Regions without a regional IAM host use the global one.
		"cn-southwest-3": "https://iam.myhuaweicloud.com",
		"ap-southeast-5": "https://iam.myhuaweicloud.com",
	} {
		if got, err := IAMEndpointForRegion(region); err != nil || got != want {
			t.Errorf("IAMEndpointForRegion(%q) = %q, %v; want %q", region, got, err, want)
		}
	}
}

func TestSecretsEchoedJSONEscapedAreScrubbed(t *testing.T) {
	const token = "pod-token-secret-value"
	escaped := `\u0070od-token-secret-value`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = fmt.Fprintf(w, `{"error_code":"X.1","error_msg":"bad token %s"}`, escaped)
	}))
	t.Cleanup(srv.Close)
	req, _ := http.NewRequest(http.MethodPost, srv.URL, http.NoBody)
	_, _, failure := call(context.Background(), srv.Client(), req, methodPodIdentity, "pod identity endpoint", []string{token}, http.StatusOK)
	if failure == nil {
		t.Fatal("no failure")
	}
	if strings.Contains(failure.Error(), token) || !strings.Contains(failure.Error(), "bad token [redacted]") {
		t.Errorf("error = %q, want the token redacted", failure.Error())
	}
}

func TestPodIdentityOverPlainHTTPIsRefusedUnlessAllowed(t *testing.T) {
	w := newWorld(t) // its pod identity endpoint is plain http
	b := w.broker
	b.PodIdentityTokenFile = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(b.PodIdentityTokenFile, []byte("pod-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.iam.SetPodIdentity("pod-token", w.kms.ProjectID())
	_, err := b.Credentials(context.Background(), PodIdentity{})
	if err == nil || !strings.Contains(err.Error(), "plain http") || !strings.Contains(err.Error(), "--allow-insecure-endpoints") {
		t.Fatalf("err = %v, want the http endpoint refused", err)
	}
	if st := w.iam.Stats(); st.PodIdentityCredentials+st.Refusals != 0 {
		t.Errorf("the endpoint saw %+v: the token left the operator", st)
	}
	b.AllowInsecureEndpoints = true
	if _, err := b.Credentials(context.Background(), PodIdentity{}); err != nil {
		t.Errorf("with insecure endpoints allowed: %v", err)
	}
}

// bigSource hands out credentials as large as the broker keeps, for ever, under a key of its own.
type bigSource struct {
	key   string
	token string
}

func (s bigSource) Key() string { return s.key }
func (s bigSource) fetch(context.Context, *Broker) (Temporary, error) {
	return Temporary{
		Credentials: kms.Credentials{AccessKey: "AK", SecretKey: "SK", SecurityToken: s.token},
		ExpiresAt:   time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC),
	}, nil
}

func TestTheCacheStaysBoundedUnderIdentityChurn(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Unix(1_800_000_000, 0))
	b := &Broker{Now: clock.Now}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	entries := func() int {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.entries)
	}
	// The heap is reported, not asserted: it depends on the runtime. The entry count, which
	// bounds it (maxEntries credentials of at most maxSecurityToken bytes), is asserted.
	report := []string{fmt.Sprintf("start %d KiB", heap()/1024)}
	const churns = 10_000
	for i := range churns {
		// Every identity is distinct and its token fresh, as audience edits would make them.
		src := bigSource{key: fmt.Sprint("churn-", i), token: strings.Repeat(fmt.Sprint(i%10), maxSecurityToken)}
		if _, err := b.Credentials(context.Background(), src); err != nil {
			t.Fatal(err)
		}
		clock.Step(time.Second)
		if (i+1)%2500 == 0 {
			if n := entries(); n > maxEntries {
				t.Fatalf("entries after %d identities = %d, want at most %d", i+1, n, maxEntries)
			}
			report = append(report, fmt.Sprintf("%d churns %d KiB", i+1, heap()/1024))
		}
	}
	t.Logf("live heap: %s; %d entries kept", strings.Join(report, ", "), entries())
}

func TestOversizedOrEverlastingCredentialsAreBounded(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Unix(1_800_000_000, 0))
	b := &Broker{Now: clock.Now}
	if _, err := b.Credentials(context.Background(), bigSource{key: "huge", token: strings.Repeat("x", 1<<20)}); err == nil || !strings.Contains(err.Error(), "security token is longer than") {
		t.Errorf("a 1 MiB security token: err = %v, want it refused", err)
	}
	var fetches atomic.Int64
	src := countingSource{key: "forever", lifetime: 100 * 365 * 24 * time.Hour, now: clock.Now, fetches: &fetches}
	if _, err := b.Credentials(context.Background(), src); err != nil {
		t.Fatal(err)
	}
	clock.Step(MaxCredentialLifetime)
	if _, err := b.Credentials(context.Background(), src); err != nil {
		t.Fatal(err)
	}
	if fetches.Load() != 2 {
		t.Errorf("fetches = %d, want 2: credentials are not kept past %s", fetches.Load(), MaxCredentialLifetime)
	}
}

func TestIdleIdentitiesAreDropped(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Unix(1_800_000_000, 0))
	b := &Broker{Now: clock.Now}
	old := newSource(clock, 24*time.Hour)
	if _, err := b.Credentials(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	clock.Step(idleLifetime + time.Second)
	other := newSource(clock, 24*time.Hour)
	other.key = "other"
	if _, err := b.Credentials(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.entries[old.key]; ok {
		t.Errorf("an identity unused for %s is still cached", idleLifetime)
	}
}
