package controllers

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// credentialsFromSecret reads either an AK/SK pair (with an optional security token) or a token.
// Surrounding white space, such as the newline a file leaves, is trimmed. Errors name the Secret's
// key at fault and never include a value.
func credentialsFromSecret(s *corev1.Secret) (kms.Credentials, error) {
	values := map[string]string{}
	for _, k := range []string{kmsv1alpha1.SecretAccessKey, kmsv1alpha1.SecretSecretKey, kmsv1alpha1.SecretSecurityToken, kmsv1alpha1.SecretToken} {
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
		AccessKey:     values[kmsv1alpha1.SecretAccessKey],
		SecretKey:     values[kmsv1alpha1.SecretSecretKey],
		SecurityToken: values[kmsv1alpha1.SecretSecurityToken],
		Token:         values[kmsv1alpha1.SecretToken],
	}
	hasAKSK := c.AccessKey != "" || c.SecretKey != "" || c.SecurityToken != ""
	switch {
	case c.Token != "" && hasAKSK:
		return kms.Credentials{}, errors.New("secret holds both token and accessKey/secretKey; keep one kind")
	case c.Token != "":
		return c, nil
	case c.AccessKey == "" && c.SecretKey == "" && c.SecurityToken == "":
		return kms.Credentials{}, fmt.Errorf("secret holds neither %q nor %q and %q", kmsv1alpha1.SecretToken, kmsv1alpha1.SecretAccessKey, kmsv1alpha1.SecretSecretKey)
	case c.AccessKey == "":
		return kms.Credentials{}, fmt.Errorf("secret key %q is missing", kmsv1alpha1.SecretAccessKey)
	case c.SecretKey == "":
		return kms.Credentials{}, fmt.Errorf("secret key %q is missing", kmsv1alpha1.SecretSecretKey)
	}
	return c, nil
}
