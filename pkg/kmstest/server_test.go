package kmstest

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

func TestTLSServer(t *testing.T) {
	srv := NewTLSServer(WithToken(testToken), WithKeys(GenerateKeys(3, nil)...))
	t.Cleanup(srv.Close)
	if !strings.HasPrefix(srv.URL, "https://127.0.0.1:") || srv.Endpoint() != srv.URL {
		t.Fatalf("URL = %s", srv.URL)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(srv.CertificatePEM()) {
		t.Fatal("CertificatePEM holds no certificate")
	}
	trusting := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	status, _, body := do(t, trusting, tokenRequest(t, srv, countBody))
	if status != http.StatusOK || string(body) != `{"total_count":3}` {
		t.Errorf("with the CA: %d %s", status, body)
	}
	if srv.Certificate() == nil || srv.CertPool() == nil {
		t.Error("Certificate or CertPool is nil")
	}
	if resp, err := http.DefaultClient.Do(tokenRequest(t, srv, countBody)); err == nil {
		resp.Body.Close()
		t.Error("an untrusting client connected")
	}
	plain := newTestServer(t)
	if plain.CertificatePEM() != nil || plain.Certificate() != nil || !strings.HasPrefix(plain.URL, "http://127.0.0.1:") {
		t.Errorf("plain server: URL %s, certificate %v", plain.URL, plain.Certificate())
	}
}

func TestDropOverHTTP2(t *testing.T) {
	e := New(WithToken(testToken))
	ts := httptest.NewUnstartedServer(e.Handler())
	ts.EnableHTTP2 = true
	ts.StartTLS()
	srv := newServer(e, ts)
	t.Cleanup(srv.Close)
	if err := srv.InjectFault(Fault{Kind: FaultDrop, Times: 1}); err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(tokenRequest(t, srv, countBody))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("got %d over %s, want an error", resp.StatusCode, resp.Proto)
	}
	status, h, _ := do(t, srv.Client(), tokenRequest(t, srv, countBody))
	if status != http.StatusOK || h == nil {
		t.Errorf("after the drop: %d", status)
	}
}

// TestConcurrentUse lists concurrently while keys change; run with -race.
func TestConcurrentUse(t *testing.T) {
	const (
		workers  = 16
		requests = 25
	)
	srv := newTestServer(t, WithKeys(GenerateKeys(300, map[string]string{"env": "prod"})...))
	var wg sync.WaitGroup
	errs := make(chan error, workers*requests+1)
	stop := make(chan struct{})
	writerDone := make(chan struct{})
	go func() { // a writer adding and deleting keys
		defer close(writerDone)
		extra := GenerateKeys(50, map[string]string{"env": "prod", "batch": "x"})
		for i := range 5000 {
			select {
			case <-stop:
				return
			default:
			}
			k := extra[i%len(extra)]
			if i%2 == 0 {
				if err := srv.PutKeys(k); err != nil {
					errs <- err
				}
			} else {
				srv.DeleteKey(k.ID)
			}
		}
	}()
	for w := range workers {
		wg.Go(func() {
			for i := range requests {
				body := fmt.Sprintf(`{"action":"filter","limit":"100","offset":"%d","tags":[{"key":"env","values":["prod"]}]}`, (w*requests+i)%300)
				status, _, b := post(t, srv, body)
				if status != http.StatusOK {
					errs <- fmt.Errorf("status %d: %s", status, b)
					continue
				}
				if !strings.Contains(string(b), `"resource_id"`) {
					errs <- fmt.Errorf("page without resources: %.100s", b)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-writerDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := srv.Stats(); st.Total != workers*requests || st.ByStatus[200] != workers*requests {
		t.Errorf("stats = %+v, want %d answered", st, workers*requests)
	}
	if ids := srv.Keys(); !slices.IsSortedFunc(ids, func(a, b kms.Key) int { return strings.Compare(a.ID, b.ID) }) {
		t.Error("Keys not sorted")
	}
}

func TestRequestsRecorded(t *testing.T) {
	srv := newSampleServer(t)
	post(t, srv, `{"action":"filter","limit":"1000","offset":"0","sequence":"919c82d4-8046-4722-9094-35c3c6524cff","tags":[{"key":"env","values":["prod"]}],"matches":[{"key":"resource_name","value":"pay"}]}`)
	post(t, srv, `{"action":"filter","limit":1000}`)
	recs := srv.Requests()
	if len(recs) != 2 {
		t.Fatalf("%d records", len(recs))
	}
	r := recs[0]
	if r.Limit != `"1000"` || r.Offset != `"0"` || r.Sequence == "" || r.Auth != AuthToken || r.Status != 200 ||
		r.ContentType != contentTypeJSON || len(r.Tags) != 1 || r.Tags[0].Values[0] != "prod" || r.Matches[0].Value != "pay" {
		t.Errorf("record = %+v", r)
	}
	if recs[1].Limit != `1000` || recs[1].Status != 400 || recs[1].Code != CodeInvalidParameter {
		t.Errorf("record of a numeric limit = %+v", recs[1])
	}
	for range MaxRecordedRequests + 10 {
		post(t, srv, countBody)
	}
	if n := len(srv.Requests()); n > MaxRecordedRequests || n < MaxRecordedRequests/2 {
		t.Errorf("%d records kept", n)
	}
}

func TestStoreAPI(t *testing.T) {
	e := New()
	if err := e.PutKeys(kms.Key{Alias: "no id"}); err == nil {
		t.Error("key without id accepted")
	}
	k := kms.Key{ID: "k1", Tags: map[string]string{"a": "1"}}
	if err := e.PutKeys(k); err != nil {
		t.Fatal(err)
	}
	k.Tags["a"] = "changed"
	got, _ := e.Key("k1")
	got.Tags["a"] = "changed too"
	if again, _ := e.Key("k1"); again.Tags["a"] != "1" {
		t.Error("the store shares tag maps with callers")
	}
	if _, err := e.UpdateKey("k1", func(k *kms.Key) { k.ID = "k2" }); err == nil {
		t.Error("id change accepted")
	}
	if _, err := e.UpdateKey("nope", func(*kms.Key) {}); err == nil {
		t.Error("update of an unknown key accepted")
	}
	if err := e.ReplaceKeys(kms.Key{ID: "x"}, kms.Key{}); err == nil || e.KeyCount() != 1 {
		t.Errorf("ReplaceKeys with a bad key: err %v, %d keys (want the store unchanged)", err, e.KeyCount())
	}
	e.DeleteAllKeys()
	if e.KeyCount() != 0 || len(e.Keys()) != 0 {
		t.Error("DeleteAllKeys left keys")
	}
}

func BenchmarkFilterConcurrent(b *testing.B) {
	srv := NewServer(WithToken(testToken))
	defer srv.Close()
	for i, team := range []string{"payments", "search", "infra", "data"} {
		if err := srv.PutKeys(GenerateKeys(2500, map[string]string{"team": team, "n": fmt.Sprint(i)})...); err != nil {
			b.Fatal(err)
		}
	}
	body := `{"action":"filter","limit":"1000","tags":[{"key":"team","values":["search"]}]}`
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			status, _, _ := post(b, srv, body)
			if status != http.StatusOK {
				b.Errorf("status %d", status)
			}
		}
	})
}
