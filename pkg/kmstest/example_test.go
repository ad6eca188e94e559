package kmstest_test

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"

	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// A test starts an emulator holding its keys and accepting a token, then calls ListKmsByTags
// as any client would. A KmsKeySelector whose spec.provider.endpoint is srv.URL does the same.
func Example() {
	srv := kmstest.NewServer(
		kmstest.WithToken("test-token"),
		kmstest.WithKeys(
			kmstest.FillDefaults(kmstest.Key{
				ID:    "0a000000-0000-4000-8000-000000000001",
				Alias: "payments-db",
				Tags:  map[string]string{"env": "prod", "team": "payments"},
			}),
			kmstest.FillDefaults(kmstest.Key{
				ID:    "0a000000-0000-4000-8000-000000000002",
				Alias: "payments-staging",
				Tags:  map[string]string{"env": "staging", "team": "payments"},
			}),
			kmstest.FillDefaults(kmstest.Key{
				ID:    "0a000000-0000-4000-8000-000000000003",
				Alias: "search-index",
				State: kmstest.StateDisabled,
				Tags:  map[string]string{"env": "prod"},
			}),
		),
	)
	defer srv.Close()

	// srv.ActionURL() returns the same URL.
	url := srv.URL + "/v1.0/" + srv.ProjectID() + "/kms/resource_instances/action"
	body := `{"action":"filter","limit":"10","offset":"0","tags":[{"key":"env","values":["prod"]}]}`
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		log.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json;charset=UTF-8")
	req.Header.Set("X-Auth-Token", "test-token")
	resp, err := srv.Client().Do(req)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()

	var page struct {
		Resources []struct {
			ResourceID     string `json:"resource_id"`
			ResourceName   string `json:"resource_name"`
			ResourceDetail struct {
				KeyState string `json:"key_state"`
			} `json:"resource_detail"`
		} `json:"resources"`
		TotalCount int `json:"total_count"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.Status)
	for _, r := range page.Resources {
		fmt.Println(r.ResourceID, r.ResourceName, "key_state", r.ResourceDetail.KeyState)
	}
	fmt.Println("total_count", page.TotalCount)
	// Output:
	// 200 OK
	// 0a000000-0000-4000-8000-000000000001 payments-db key_state 2
	// 0a000000-0000-4000-8000-000000000003 search-index key_state 3
	// total_count 2
}

// An operator trusts a TLS emulator when --kms-ca-file names a file holding CertificatePEM; a
// Go client can use CertPool, or simply Client.
func ExampleNewTLSServer() {
	srv := kmstest.NewTLSServer(
		kmstest.WithToken("test-token"),
		kmstest.WithKeys(kmstest.GenerateKeys(3, map[string]string{"env": "prod"})...),
	)
	defer srv.Close()

	fmt.Println(strings.HasPrefix(srv.URL, "https://127.0.0.1:"))
	fmt.Println(strings.HasPrefix(string(srv.CertificatePEM()), "-----BEGIN CERTIFICATE-----"))

	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: srv.CertPool(), MinVersion: tls.VersionTLS12},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodPost, srv.ActionURL(), strings.NewReader(`{"action":"count"}`))
	if err != nil {
		log.Fatal(err)
	}
	req.Header.Set("X-Auth-Token", "test-token")
	resp, err := client.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.StatusCode, string(b))
	// Output:
	// true
	// true
	// 200 {"total_count":3}
}

// A fault makes the emulator misbehave for a number of requests, here answering the first one
// with a 429 as the API gateway does when throttling.
func ExampleEmulator_InjectFault() {
	srv := kmstest.NewServer(kmstest.WithToken("test-token"))
	defer srv.Close()

	err := srv.InjectFault(kmstest.Fault{Kind: kmstest.FaultThrottle, Times: 1, RetryAfter: 2})
	if err != nil {
		log.Fatal(err)
	}
	for range 2 {
		req, err := http.NewRequest(http.MethodPost, srv.ActionURL(), strings.NewReader(`{"action":"count"}`))
		if err != nil {
			log.Fatal(err)
		}
		req.Header.Set("X-Auth-Token", "test-token")
		resp, err := srv.Client().Do(req)
		if err != nil {
			log.Fatal(err)
		}
		_ = resp.Body.Close()
		fmt.Printf("%d Retry-After=%q\n", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	fmt.Println("pending faults:", len(srv.Faults()))
	// Output:
	// 429 Retry-After="2"
	// 200 Retry-After=""
	// pending faults: 0
}

// A FaultKMSError answers with a KMS error body, which ErrorBody decodes; here an expired
// token, until ClearFaults.
func ExampleEmulator_InjectFault_kmsError() {
	srv := kmstest.NewServer(kmstest.WithToken("test-token"))
	defer srv.Close()

	if err := srv.InjectFault(kmstest.Fault{Kind: kmstest.FaultKMSError, Code: kmstest.CodeTokenExpired}); err != nil {
		log.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, srv.ActionURL(), strings.NewReader(`{"action":"count"}`))
	if err != nil {
		log.Fatal(err)
	}
	req.Header.Set("X-Auth-Token", "test-token")
	resp, err := srv.Client().Do(req)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	var body kmstest.ErrorBody
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.StatusCode, body.Error.Code, body.Error.Message)
	srv.ClearFaults()
	// Output:
	// 403 KMS.0303 X-Auth-Token has expired
}

// Stats counts the requests by action and status; Requests tells what each one asked for and
// how it was answered.
func ExampleEmulator_Stats() {
	srv := kmstest.NewServer(kmstest.WithToken("test-token"))
	defer srv.Close()

	for _, token := range []string{"test-token", "wrong-token"} {
		body := `{"action":"filter","limit":"100","offset":"0","tags":[{"key":"env","values":["prod"]}]}`
		req, err := http.NewRequest(http.MethodPost, srv.ActionURL(), strings.NewReader(body))
		if err != nil {
			log.Fatal(err)
		}
		req.Header.Set("X-Auth-Token", token)
		resp, err := srv.Client().Do(req)
		if err != nil {
			log.Fatal(err)
		}
		_ = resp.Body.Close()
	}

	st := srv.Stats()
	fmt.Println("total:", st.Total, "filter:", st.ByAction[kmstest.ActionFilter])
	fmt.Println("200:", st.ByStatus[http.StatusOK], "403:", st.ByStatus[http.StatusForbidden])
	for _, r := range srv.Requests() {
		fmt.Printf("%s limit=%s tags=%v auth=%s status=%d code=%q\n", r.Action, r.Limit, r.Tags, r.Auth, r.Status, r.Code)
	}
	srv.ResetStats()
	fmt.Println("after reset:", srv.Stats().Total)
	// Output:
	// total: 2 filter: 2
	// 200: 1 403: 1
	// filter limit="100" tags=[{env [prod]}] auth=token status=200 code=""
	// filter limit="100" tags=[{env [prod]}] auth=token status=403 code="KMS.0302"
	// after reset: 0
}

// Changing a key while a test runs is what an application watching the ConfigMap should
// notice: the operator writes the new state at its next listing.
func ExampleEmulator_SetKeyState() {
	const id = "0a000000-0000-4000-8000-000000000001"
	srv := kmstest.NewServer(
		kmstest.WithToken("test-token"),
		kmstest.WithKeys(kmstest.FillDefaults(kmstest.Key{ID: id, Alias: "payments-db"})),
	)
	defer srv.Close()

	k, _ := srv.Key(id)
	fmt.Println(k.State)
	if err := srv.SetKeyState(id, kmstest.StateDisabled); err != nil {
		log.Fatal(err)
	}
	k, _ = srv.Key(id)
	fmt.Println(k.State)

	err := srv.SetKeyState("no-such-key", kmstest.StateEnabled)
	fmt.Println(errors.Is(err, kmstest.ErrKeyNotFound))
	// Output:
	// Enabled
	// Disabled
	// true
}

// FillDefaults completes a key that sets only what a test cares about.
func ExampleFillDefaults() {
	k := kmstest.FillDefaults(kmstest.Key{ID: "0a000000-0000-4000-8000-000000000001"})
	fmt.Println(k.State, k.Spec, k.Usage, k.Origin, k.CreationDate.Format("2006-01-02"))
	// Output:
	// Enabled AES_256 ENCRYPT_DECRYPT kms 2024-01-01
}
