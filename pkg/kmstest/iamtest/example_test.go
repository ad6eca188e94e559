package iamtest_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth/signer"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/request"

	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/iamtest"
)

// An IAM issues temporary credentials that the Emulators it trusts accept. Here the node's
// agency gets AK/SK from the emulated ECS metadata service, and a KMS request is signed with
// them, as the SDK's metadata credentials would.
func ExampleIAM() {
	kms := kmstest.NewServer(kmstest.WithKeys(kmstest.FillDefaults(kmstest.Key{ID: "0a000000-0000-4000-8000-000000000001"})))
	defer kms.Close()
	iam := iamtest.New(iamtest.WithCredentialLifetime(15 * time.Minute))
	iam.Trust(kms.Emulator)
	iam.SetNodeAgency(kms.ProjectID())
	meta := iamtest.NewServer(iam)
	defer meta.Close()

	// PUT the session token, then GET the agency's credentials with it.
	req, _ := http.NewRequest(http.MethodPut, meta.URL+iamtest.PathMetadataToken, nil)
	req.Header.Set(iamtest.HeaderMetadataTokenTTL, "21600")
	token := call(req)
	req, _ = http.NewRequest(http.MethodGet, meta.URL+iamtest.PathSecurityKey, nil)
	req.Header.Set(iamtest.HeaderMetadataToken, token)
	var got map[string]iamtest.TemporaryCredential
	if err := json.Unmarshal([]byte(call(req)), &got); err != nil {
		log.Fatal(err)
	}
	c := got["credential"]

	// Sign a ListKmsByTags count with them.
	body := `{"action":"count"}`
	sreq := request.NewHttpRequestBuilder().
		WithEndpoint(kms.URL).
		WithPath(kms.ActionPath()).
		WithMethod(http.MethodPost).
		AddHeaderParam("Content-Type", "application/json;charset=UTF-8").
		AddHeaderParam(kmstest.HeaderSdkDate, time.Now().UTC().Format(signer.BasicDateFormat)).
		AddHeaderParam(kmstest.HeaderSecurityToken, c.SecurityToken).
		WithBody("json", body).
		Build()
	headers, err := signer.Sign(sreq, c.Access, c.Secret)
	if err != nil {
		log.Fatal(err)
	}
	req, _ = http.NewRequest(http.MethodPost, kms.ActionURL(), strings.NewReader(body))
	for k, v := range sreq.GetHeaderParams() {
		req.Header.Set(k, v)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	fmt.Println(call(req))
	st := iam.Stats()
	fmt.Println("metadata tokens", st.MetadataTokens, "credentials", st.MetadataCredentials)
	// Output:
	// {"total_count":1}
	// metadata tokens 1 credentials 1
}

// call sends a request and returns the body of its 2xx answer.
func call(req *http.Request) string {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode/100 != 2 {
		log.Fatalf("%s %s: %d %s %v", req.Method, req.URL.Path, resp.StatusCode, b, err)
	}
	return string(b)
}
