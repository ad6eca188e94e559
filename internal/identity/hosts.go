package identity

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// DefaultIAMHosts are the hosts a workload identity of a namespaced kind may send its token to
// unless the operator is told otherwise: Huawei Cloud's global and regional IAM endpoints, as
// IAMEndpointForRegion names them.
var DefaultIAMHosts = []string{"iam.myhuaweicloud.com", "iam.*.myhuaweicloud.com", "iam.*.myhuaweicloud.eu"}

// CheckHostPattern tells, as an error, why p is not a host pattern: a host name or IP address,
// optionally with :port, where a * stands for one whole DNS label or for any port.
func CheckHostPattern(p string) error {
	host, port := splitHostPort(p)
	switch {
	case host == "" || strings.ContainsAny(p, "/?#@ "):
		return fmt.Errorf("%q is not a host, such as iam.*.myhuaweicloud.com or 127.0.0.1:*", p)
	case port != "" && port != "*" && strings.Trim(port, "0123456789") != "":
		return fmt.Errorf("%q: the port must be a number or *", p)
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || (strings.Contains(label, "*") && label != "*") {
			return fmt.Errorf("%q: a * stands for one whole label, as in iam.*.myhuaweicloud.com", p)
		}
	}
	return nil
}

// HostAllowed tells whether the host of an https or http URL matches one of the patterns. A
// pattern without a port matches the default port only.
func HostAllowed(patterns []string, u *url.URL) bool {
	host, port := strings.ToLower(u.Hostname()), u.Port()
	for _, p := range patterns {
		pHost, pPort := splitHostPort(strings.ToLower(p))
		portOK := pPort == "*" || pPort == port || (pPort == "" && (port == "" || port == defaultPort(u.Scheme)))
		if portOK && labelsMatch(pHost, host) {
			return true
		}
	}
	return false
}

func splitHostPort(p string) (host, port string) {
	if h, pt, err := net.SplitHostPort(p); err == nil {
		return h, pt
	}
	return p, ""
}

func defaultPort(scheme string) string {
	if scheme == "http" {
		return "80"
	}
	return "443"
}

func labelsMatch(pattern, host string) bool {
	pl, hl := strings.Split(pattern, "."), strings.Split(host, ".")
	if len(pl) != len(hl) {
		return false
	}
	for i := range pl {
		if hl[i] == "" || (pl[i] != "*" && pl[i] != hl[i]) {
			return false
		}
	}
	return true
}
