package testkit

import (
	"bytes"
	"compress/gzip"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

func TestRepoRootFindsTheModuleFromBelow(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, ManagerRoleFile)); err != nil {
		t.Fatalf("root %s: %v", root, err)
	}
	if _, err := repoRootFrom(t.TempDir()); err == nil {
		t.Fatal("a directory outside the repository has a root")
	}
}

func TestReadRBACRolesReadsEveryRoleOfConfigRBAC(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	roles, err := ReadRBACRoles(root)
	if err != nil {
		t.Fatal(err)
	}
	byFile := map[string]Role{}
	for _, r := range roles {
		if r.Kind != "Role" && r.Kind != "ClusterRole" {
			t.Errorf("%s: kind %q", r.File, r.Kind)
		}
		byFile[filepath.Base(r.File)] = r
	}
	manager, ok := byFile["role.yaml"]
	if !ok || manager.Kind != "ClusterRole" || len(manager.Rules) == 0 {
		t.Fatalf("role.yaml: %+v", manager)
	}
	if _, ok := byFile["role_binding.yaml"]; ok {
		t.Error("a RoleBinding was read as a role")
	}
	if le, err := ReadRole(filepath.Join(root, LeaderElectionRoleFile)); err != nil || le.Kind != "Role" {
		t.Errorf("leader election role: %+v, %v", le, err)
	}
}

func TestParseRolesSkipsOtherKindsAndFlattensRules(t *testing.T) {
	roles, err := ParseRoles([]byte(`---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: r, namespace: ns}
rules:
- apiGroups: ["", apps]
  resources: [configmaps]
  verbs: [get, list]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, watch]
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(roles) != 1 || roles[0].Name != "r" || roles[0].Namespace != "ns" {
		t.Fatalf("roles: %+v", roles)
	}
	verbs, err := ResourceVerbs(roles[0].Rules)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"/configmaps": {"get", "list", "watch"}, "apps/configmaps": {"get", "list"}}
	if !reflect.DeepEqual(verbs, want) {
		t.Errorf("ResourceVerbs = %v, want %v", verbs, want)
	}
	perms := Permissions(roles[0].Rules)
	if len(perms) != 5 || perms[0] != "group= resource=configmaps name= verb=get" {
		t.Errorf("Permissions = %q", perms)
	}
	if _, err := ResourceVerbs([]rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}}); err == nil {
		t.Error("ResourceVerbs accepted a non-resource URL")
	}
}

func TestMetricsSumsTheSeriesWithTheLabels(t *testing.T) {
	m, err := ParseMetrics(strings.NewReader(`# TYPE requests_total counter
requests_total{op="filter",outcome="success"} 3
requests_total{op="filter",outcome="error"} 2
requests_total{op="other",outcome="success"} 7
# TYPE ready gauge
ready{selector="a"} 1
# TYPE duration_seconds histogram
duration_seconds_bucket{op="filter",le="+Inf"} 5
duration_seconds_sum{op="filter"} 0.5
duration_seconds_count{op="filter"} 5
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		family string
		labels map[string]string
		want   float64
	}{
		{"requests_total", nil, 12},
		{"requests_total", map[string]string{"op": "filter"}, 5},
		{"requests_total", map[string]string{"op": "filter", "outcome": "success"}, 3},
		{"requests_total", map[string]string{"missing": ""}, 0},
		{"ready", map[string]string{"selector": "a"}, 1},
		{"duration_seconds", map[string]string{"op": "filter"}, 5},
		{"absent", nil, 0},
	} {
		if got := m.Sum(c.family, c.labels); got != c.want {
			t.Errorf("Sum(%s, %v) = %v, want %v", c.family, c.labels, got, c.want)
		}
	}
}

func TestFreeLoopbackAddressesAreDistinct(t *testing.T) {
	addrs, err := FreeLoopbackAddresses(3)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if !strings.HasPrefix(a, "127.0.0.1:") || seen[a] {
			t.Errorf("addresses %v", addrs)
		}
		seen[a] = true
	}
}

func TestEmulatorTransportTrustsEveryEmulator(t *testing.T) {
	transport, err := EmulatorTransport()
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		srv := NewEmulator("tok")
		resp, err := (&http.Client{Transport: transport}).Get(srv.URL + "/admin/keys")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		srv.Close()
	}
}

func TestConfigMapReaders(t *testing.T) {
	a := Key("a", "alias-a", kmstest.StateEnabled, nil)
	b := Key("b", "alias-b", kmstest.StateDisabled, nil)
	data := map[string]string{"a": "Enabled", "b": "Disabled", kmsv1alpha1.KeysJSONKey: `[{"id":"a"},{"id":"b"}]`}
	if got := KeyStates(data); !reflect.DeepEqual(got, StatesOf(a, b)) {
		t.Errorf("KeyStates = %v", got)
	}
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	_, _ = w.Write([]byte(data[kmsv1alpha1.KeysJSONKey]))
	_ = w.Close()
	for _, cm := range []*corev1.ConfigMap{
		{Data: data},
		{Data: KeyStates(data), BinaryData: map[string][]byte{kmsv1alpha1.KeysJSONGzipKey: gz.Bytes()}},
	} {
		records, err := KeysJSON(cm)
		if err != nil || len(records) != 2 || records[1]["id"] != "b" {
			t.Errorf("KeysJSON = %v, %v", records, err)
		}
	}
}
