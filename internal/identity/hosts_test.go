package identity

import (
	"net/url"
	"testing"
)

func TestHostAllowedMatchesWholeLabelsAndPorts(t *testing.T) {
	for raw, want := range map[string]bool{
		"https://iam.myhuaweicloud.com":                 true,
		"https://iam.cn-north-4.myhuaweicloud.com":      true,
		"https://iam.cn-north-4.myhuaweicloud.com:443/": true,
		"https://iam.eu-west-101.myhuaweicloud.eu":      true,
		"https://IAM.CN-NORTH-4.myhuaweicloud.com":      true,
		"https://iam.cn-north-4.myhuaweicloud.com:8443": false,
		"https://iam.a.b.myhuaweicloud.com":             false,
		"https://iam.myhuaweicloud.com.evil.example":    false,
		"https://evil.example/iam.myhuaweicloud.com":    false,
		"https://kms.cn-north-4.myhuaweicloud.com":      false,
		"https://127.0.0.1:8443":                        false,
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := HostAllowed(DefaultIAMHosts, u); got != want {
			t.Errorf("HostAllowed(defaults, %s) = %v, want %v", raw, got, want)
		}
	}
	u, _ := url.Parse("https://127.0.0.1:40123")
	if !HostAllowed([]string{"127.0.0.1:*"}, u) {
		t.Error("127.0.0.1:* does not allow 127.0.0.1:40123")
	}
	for _, bad := range []string{"", "https://iam.example", "iam.*x.example", "iam..example", "a.example:port", "a.example/path"} {
		if CheckHostPattern(bad) == nil {
			t.Errorf("CheckHostPattern(%q) accepted it", bad)
		}
	}
	for _, good := range append([]string{"127.0.0.1:*", "iam.example:8443"}, DefaultIAMHosts...) {
		if err := CheckHostPattern(good); err != nil {
			t.Errorf("CheckHostPattern(%q) = %v", good, err)
		}
	}
}
