package testkit

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/onsi/gomega"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Tenant creates another namespace, with labels, that shares the fixture's client and emulator
// but has no credentials Secret of its own: for selectors that list through a provider.
func (f *Fixture) Tenant(labels map[string]string) *Fixture {
	ns := Namespace("")
	ns.GenerateName, ns.Labels = "tenant-", labels
	f.g.Expect(f.Client.Create(context.Background(), ns)).WithOffset(1).To(gomega.Succeed())
	t := *f
	t.Namespace = ns.Name
	return &t
}

// NamespaceEditorRoles are the roles a team gets in its namespace: edit selectors and
// KmsProviders, and nothing else.
var NamespaceEditorRoles = []string{"kmskeyselector_editor_role.yaml", "kmsprovider_editor_role.yaml"}

// NamespaceEditorName is the name of the user that NamespaceEditor acts as, for granting it more.
func NamespaceEditorName(namespace string) string { return "editor-" + namespace }

// NamespaceEditor returns a client that acts as a user bound, in namespace only, to
// NamespaceEditorRoles: what a team may do, for tests of what a hostile one can.
func (e *Env) NamespaceEditor(ctx context.Context, namespace string) (client.Client, error) {
	name := NamespaceEditorName(namespace)
	var paths []string
	for _, f := range NamespaceEditorRoles {
		paths = append(paths, filepath.Join(e.Root, RBACDir, f))
	}
	roles, err := ReadRoles(paths...)
	if err != nil {
		return nil, err
	}
	for _, r := range roles {
		role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: r.Name, Namespace: namespace}, Rules: r.Rules}
		binding := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: r.Name, Namespace: namespace},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: r.Name},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: name}},
		}
		for _, obj := range []client.Object{role, binding} {
			if err := e.Client.Create(ctx, obj); err != nil {
				return nil, fmt.Errorf("granting %s to %s: %w", r.Name, name, err)
			}
		}
	}
	user, err := e.Environment.AddUser(envtest.User{Name: name}, nil)
	if err != nil {
		return nil, fmt.Errorf("adding user %s: %w", name, err)
	}
	return client.New(user.Config(), client.Options{Scheme: e.Client.Scheme()})
}
