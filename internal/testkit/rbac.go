package testkit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// The generated RBAC manifests, relative to the repository root.
const (
	// RBACDir holds every RBAC manifest of the kustomize install.
	RBACDir = "config/rbac"
	// ManagerRoleFile is the ClusterRole that `make manifests` generates from the kubebuilder
	// RBAC markers: everything the operator may do outside leader election.
	ManagerRoleFile = "config/rbac/role.yaml"
	// LeaderElectionRoleFile is the Role the operator needs, in one namespace, to elect a leader.
	LeaderElectionRoleFile = "config/rbac/leader_election_role.yaml"
)

// Role is a Role or ClusterRole read from a manifest.
type Role struct {
	// File is the manifest the role was read from; empty when it was parsed from bytes.
	File      string
	Kind      string
	Name      string
	Namespace string
	Rules     []rbacv1.PolicyRule
}

// ParseRoles returns every Role and ClusterRole of a YAML or JSON stream of one or more
// documents, in order; documents of other kinds are skipped.
func ParseRoles(data []byte) ([]Role, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []Role
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading a YAML document: %w", err)
		}
		var obj struct {
			metav1.TypeMeta `json:",inline"`
			Metadata        metav1.ObjectMeta   `json:"metadata"`
			Rules           []rbacv1.PolicyRule `json:"rules"`
		}
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			return nil, fmt.Errorf("decoding a YAML document: %w", err)
		}
		if obj.Kind != "Role" && obj.Kind != "ClusterRole" {
			continue
		}
		out = append(out, Role{Kind: obj.Kind, Name: obj.Metadata.Name, Namespace: obj.Metadata.Namespace, Rules: obj.Rules})
	}
}

// ReadRoles returns the Roles and ClusterRoles of the manifests at paths, in order.
func ReadRoles(paths ...string) ([]Role, error) {
	var out []Role
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("reading roles: %w", err)
		}
		roles, err := ParseRoles(data)
		if err != nil {
			return nil, fmt.Errorf("reading roles of %s: %w", p, err)
		}
		for i := range roles {
			roles[i].File = p
		}
		out = append(out, roles...)
	}
	return out, nil
}

// ReadRole returns the one Role or ClusterRole of the manifest at path.
func ReadRole(path string) (Role, error) {
	roles, err := ReadRoles(path)
	if err != nil {
		return Role{}, err
	}
	if len(roles) != 1 {
		return Role{}, fmt.Errorf("%s holds %d roles, want exactly one", path, len(roles))
	}
	return roles[0], nil
}

// ReadRBACRoles returns every Role and ClusterRole of RBACDir under root, by file name.
func ReadRBACRoles(root string) ([]Role, error) {
	files, err := filepath.Glob(filepath.Join(root, RBACDir, "*.yaml"))
	if err != nil {
		return nil, fmt.Errorf("listing RBAC manifests: %w", err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no RBAC manifests in %s", filepath.Join(root, RBACDir))
	}
	sort.Strings(files)
	return ReadRoles(files...)
}

// Object returns the role as an API object to create, under name in namespace (namespace is
// ignored for a ClusterRole).
func (r Role) Object(name, namespace string) (client.Object, error) {
	rules := slices.Clone(r.Rules)
	switch r.Kind {
	case "ClusterRole":
		return &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, nil
	case "Role":
		return &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}, Rules: rules}, nil
	default:
		return nil, fmt.Errorf("%q is not a Role or a ClusterRole", r.Kind)
	}
}

// Permissions flattens rules into one sorted string per permission granted,
// "group=G resource=R name=N verb=V" or "url=U verb=V", without duplicates: rules that grant the
// same permissions compare equal however they are grouped or ordered.
func Permissions(rules []rbacv1.PolicyRule) []string {
	set := map[string]bool{}
	for _, r := range rules {
		names := r.ResourceNames
		if len(names) == 0 {
			names = []string{""}
		}
		for _, v := range r.Verbs {
			for _, u := range r.NonResourceURLs {
				set[fmt.Sprintf("url=%s verb=%s", u, v)] = true
			}
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, n := range names {
						set[fmt.Sprintf("group=%s resource=%s name=%s verb=%s", g, res, n, v)] = true
					}
				}
			}
		}
	}
	out := make([]string, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// ResourceVerbs flattens rules into "group/resource" (the core group empty: "/secrets") to the
// sorted verbs granted on it. It fails on a rule that says more than that: resource names or
// non-resource URLs.
func ResourceVerbs(rules []rbacv1.PolicyRule) (map[string][]string, error) {
	out := map[string][]string{}
	for _, r := range rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			return nil, fmt.Errorf("rule %+v names resources or non-resource URLs", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				k := g + "/" + res
				out[k] = append(out[k], r.Verbs...)
			}
		}
	}
	for k, verbs := range out {
		sort.Strings(verbs)
		out[k] = slices.Compact(verbs)
	}
	return out, nil
}
