package controllers

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

func TestCredentialsFromSecret(t *testing.T) {
	cases := []struct {
		name    string
		data    map[string]string
		want    kms.Credentials
		wantErr string
	}{
		{name: "token", data: map[string]string{"token": "tok\n"}, want: kms.Credentials{Token: "tok"}},
		{name: "aksk", data: map[string]string{"accessKey": "ak", "secretKey": "sk"}, want: kms.Credentials{AccessKey: "ak", SecretKey: "sk"}},
		{name: "temporary aksk", data: map[string]string{"accessKey": "ak", "secretKey": "sk", "securityToken": "st"},
			want: kms.Credentials{AccessKey: "ak", SecretKey: "sk", SecurityToken: "st"}},
		{name: "empty", data: map[string]string{}, wantErr: "neither"},
		{name: "empty value", data: map[string]string{"token": " \n"}, wantErr: `"token" is empty`},
		{name: "only access key", data: map[string]string{"accessKey": "ak-1234"}, wantErr: `"secretKey" is missing`},
		{name: "only secret key", data: map[string]string{"secretKey": "sk-1234"}, wantErr: `"accessKey" is missing`},
		{name: "only security token", data: map[string]string{"securityToken": "st"}, wantErr: `"accessKey" is missing`},
		{name: "both kinds", data: map[string]string{"token": "tok-1234", "accessKey": "ak-1234", "secretKey": "sk-1234"}, wantErr: "both"},
		{name: "not UTF-8", data: map[string]string{"token": "\xff\xfe"}, wantErr: "UTF-8"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &corev1.Secret{Data: map[string][]byte{}}
			for k, v := range tc.data {
				s.Data[k] = []byte(v)
			}
			got, err := credentialsFromSecret(s)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				for _, v := range tc.data {
					if strings.TrimSpace(v) != "" && strings.Contains(err.Error(), v) {
						t.Fatalf("error %q reveals a secret value", err)
					}
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
