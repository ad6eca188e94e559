package testkit

import (
	"net/http"
	"testing"
)

func TestServeTLSIsTrustedAsTheEmulatorsAre(t *testing.T) {
	srv := ServeTLS(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) }))
	defer srv.Close()
	o, err := OperatorOptions("0")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: o.KMS.Transport}).Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTeapot {
		t.Errorf("status %d", resp.StatusCode)
	}
	if _, err := http.Get(srv.URL); err == nil {
		t.Error("the system roots alone trust the server")
	}
}
