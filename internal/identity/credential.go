package identity

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// credential is the temporary AK/SK that IAM, the metadata service and the pod identity endpoint
// all answer with. The names are those of the official SDK, which also accepts the alternatives.
type credential struct {
	Access             string `json:"access"`
	AccessKeyID        string `json:"accessKeyId"`
	Secret             string `json:"secret"`
	SecretAccessKey    string `json:"secretAccessKey"`
	SecurityToken      string `json:"securitytoken"`
	SecurityTokenCamel string `json:"securityToken"`
	ExpiresAt          string `json:"expires_at"`
	Expiration         string `json:"expiration"`
}

// temporary checks a credential and turns it into Temporary. Errors name the missing field,
// never a value.
func (c *credential) temporary() (Temporary, error) {
	if c == nil {
		return Temporary{}, errors.New("the answer holds no credential")
	}
	t := Temporary{Credentials: kms.Credentials{
		AccessKey:     firstOf(c.Access, c.AccessKeyID),
		SecretKey:     firstOf(c.Secret, c.SecretAccessKey),
		SecurityToken: firstOf(c.SecurityToken, c.SecurityTokenCamel),
	}}
	switch {
	case t.AccessKey == "":
		return Temporary{}, errors.New("the credential has no access key")
	case t.SecretKey == "":
		return Temporary{}, errors.New("the credential has no secret key")
	case t.SecurityToken == "":
		return Temporary{}, errors.New("the credential has no security token")
	}
	expires, err := parseTime(firstOf(c.ExpiresAt, c.Expiration))
	if err != nil {
		return Temporary{}, fmt.Errorf("the credential's expires_at: %w", err)
	}
	t.ExpiresAt = expires
	return t, nil
}

func decodeCredential(body []byte, field string) (Temporary, error) {
	var answer map[string]*credential
	if err := json.Unmarshal(body, &answer); err != nil {
		return Temporary{}, errors.New("the answer is not the expected JSON object")
	}
	c, ok := answer[field]
	if !ok {
		return Temporary{}, fmt.Errorf("the answer has no %q", field)
	}
	return c.temporary()
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("missing")
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not an RFC 3339 time", s)
	}
	return t, nil
}

func firstOf(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}
