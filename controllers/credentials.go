package controllers

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// The keys of a credentials Secret.
const (
	SecretAccessKey     = "accessKey"
	SecretSecretKey     = "secretKey"
	SecretSecurityToken = "securityToken"
	SecretToken         = "token"
)

// credentialsFromSecret reads either an AK/SK pair (with an optional security token) or a token.
// Surrounding white space, such as the newline a file leaves, is trimmed. Errors name the Secret's
// key at fault and never include a value.
func credentialsFromSecret(s *corev1.Secret) (kms.Credentials, error) {
	values := map[string]string{}
	for _, k := range []string{SecretAccessKey, SecretSecretKey, SecretSecurityToken, SecretToken} {
		raw, ok := s.Data[k]
		if !ok {
			continue
		}
		if !utf8.Valid(raw) {
			return kms.Credentials{}, fmt.Errorf("secret key %q is not valid UTF-8", k)
		}
		v := strings.TrimSpace(string(raw))
		if v == "" {
			return kms.Credentials{}, fmt.Errorf("secret key %q is empty", k)
		}
		values[k] = v
	}
	c := kms.Credentials{
		AccessKey:     values[SecretAccessKey],
		SecretKey:     values[SecretSecretKey],
		SecurityToken: values[SecretSecurityToken],
		Token:         values[SecretToken],
	}
	hasAKSK := c.AccessKey != "" || c.SecretKey != "" || c.SecurityToken != ""
	switch {
	case c.Token != "" && hasAKSK:
		return kms.Credentials{}, errors.New("secret holds both token and accessKey/secretKey; keep one kind")
	case c.Token != "":
		return c, nil
	case c.AccessKey == "" && c.SecretKey == "" && c.SecurityToken == "":
		return kms.Credentials{}, fmt.Errorf("secret holds neither %q nor %q and %q", SecretToken, SecretAccessKey, SecretSecretKey)
	case c.AccessKey == "":
		return kms.Credentials{}, fmt.Errorf("secret key %q is missing", SecretAccessKey)
	case c.SecretKey == "":
		return kms.Credentials{}, fmt.Errorf("secret key %q is missing", SecretSecretKey)
	}
	return c, nil
}
