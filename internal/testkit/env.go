package testkit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/kms-key-sync/kms-key-sync/internal/operator"
)

// DefaultOperatorUser is the user the operator authenticates as unless EnvOptions says
// otherwise. It is in no group but system:authenticated, so it may do only what the generated
// RBAC bound to it grants.
const DefaultOperatorUser = "kms-key-sync-operator"

// OperatorCRDDir holds the operator's CRDs, relative to the repository root.
const OperatorCRDDir = "config/crd/bases"

// EnvOptions configure StartEnv. The zero value starts the environment every operator suite
// uses.
type EnvOptions struct {
	// Root is the repository root; empty means RepoRoot().
	Root string
	// CRDDirectories hold the CRDs to install, relative to the repository root or absolute; nil
	// means OperatorCRDDir. A directory that does not exist is an error.
	CRDDirectories []string
	// OperatorUser is the name the operator authenticates as; empty means DefaultOperatorUser.
	OperatorUser string
	// StartTimeout bounds the start of etcd and of the API server, each; zero means envtest's
	// default ($KUBEBUILDER_CONTROLPLANE_START_TIMEOUT, or 20s).
	StartTimeout time.Duration
	// APIAudiences, when set, are the audiences the API server accepts (--api-audiences), as
	// distributions set them (k3s: https://kubernetes.default.svc.cluster.local,k3s); empty
	// means the service account issuer.
	APIAudiences []string
}

// Env is a running envtest control plane: etcd and a kube-apiserver that enforces RBAC and
// OwnerReferencesPermissionEnforcement, with the CRDs installed and the operator's identity
// bound to the ClusterRole of ManagerRoleFile.
type Env struct {
	// Root is the repository root.
	Root string
	// Environment is the envtest environment, for what the kit does not wrap.
	Environment *envtest.Environment
	// Config authenticates as an administrator (system:masters).
	Config *rest.Config
	// Client is an administrator's client with operator.Scheme, for test setup and assertions.
	Client client.WithWatch
	// OperatorUser is the name the operator authenticates as.
	OperatorUser string
	// OperatorConfig authenticates as OperatorUser: run the operator with it, so that it gets
	// only what the generated RBAC grants.
	OperatorConfig *rest.Config

	operator *envtest.AuthenticatedUser
}

// StartEnv starts the control plane and prepares it as Env describes. It takes the control plane
// binaries from $KUBEBUILDER_ASSETS, or else from bin/k8s, where hack/setup-envtest.sh builds
// them. Call Stop when done; on error, whatever had started is stopped.
func StartEnv(o EnvOptions) (*Env, error) {
	root := o.Root
	if root == "" {
		var err error
		if root, err = RepoRoot(); err != nil {
			return nil, err
		}
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("finding the repository root: %w", err)
	}
	crdDirs := o.CRDDirectories
	if crdDirs == nil {
		crdDirs = []string{OperatorCRDDir}
	}
	var crdPaths []string
	for _, d := range crdDirs {
		if !filepath.IsAbs(d) {
			d = filepath.Join(root, d)
		}
		crdPaths = append(crdPaths, d)
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:        crdPaths,
		ErrorIfCRDPathMissing:    true,
		Scheme:                   operator.Scheme,
		ControlPlaneStartTimeout: o.StartTimeout,
		BinaryAssetsDirectory:    builtAssets(root),
	}
	// The API server then checks that whoever sets blockOwnerDeletion on an owner reference may
	// update the owner's finalizers, as production API servers do.
	env.ControlPlane.GetAPIServer().Configure().Append("enable-admission-plugins", "OwnerReferencesPermissionEnforcement")
	if len(o.APIAudiences) > 0 {
		env.ControlPlane.GetAPIServer().Configure().Set("api-audiences", strings.Join(o.APIAudiences, ","))
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" && env.BinaryAssetsDirectory == "" {
		return nil, errors.New("KUBEBUILDER_ASSETS is not set and bin/k8s holds no control plane: run hack/setup-envtest.sh")
	}
	cfg, err := env.Start()
	if err != nil {
		// Start can fail half-way with processes running; Stop stops whatever did start.
		return nil, errors.Join(fmt.Errorf("starting the control plane: %w", err), env.Stop())
	}
	e := &Env{Root: root, Environment: env, Config: cfg, OperatorUser: o.OperatorUser}
	if e.OperatorUser == "" {
		e.OperatorUser = DefaultOperatorUser
	}
	if err := e.prepare(); err != nil {
		return nil, errors.Join(err, e.Stop())
	}
	return e, nil
}

// builtAssets returns the directory under bin/k8s that holds kube-apiserver and etcd, or "".
func builtAssets(root string) string {
	matches, _ := filepath.Glob(filepath.Join(root, "bin", "k8s", "*", "kube-apiserver"))
	slices.Sort(matches)
	for i := len(matches) - 1; i >= 0; i-- {
		dir := filepath.Dir(matches[i])
		if _, err := os.Stat(filepath.Join(dir, "etcd")); err == nil {
			return dir
		}
	}
	return ""
}

func (e *Env) prepare() error {
	var err error
	if e.Client, err = client.NewWithWatch(e.Config, client.Options{Scheme: operator.Scheme}); err != nil {
		return fmt.Errorf("creating the admin client: %w", err)
	}
	// The operator's client is as fast as the admin's: tests wait on the operator, not on
	// client-side throttling.
	base := &rest.Config{QPS: e.Config.QPS, Burst: e.Config.Burst}
	if e.operator, err = e.Environment.AddUser(envtest.User{Name: e.OperatorUser}, base); err != nil {
		return fmt.Errorf("adding the operator's user: %w", err)
	}
	e.OperatorConfig = e.operator.Config()

	role, err := ReadRole(filepath.Join(e.Root, ManagerRoleFile))
	if err != nil {
		return err
	}
	obj, err := role.Object(role.Name, "")
	if err != nil {
		return fmt.Errorf("%s: %w", ManagerRoleFile, err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: e.OperatorUser},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: role.Kind, Name: role.Name},
		Subjects:   []rbacv1.Subject{e.subject()},
	}
	ctx := context.Background()
	for _, o := range []client.Object{obj, binding} {
		if err := e.Client.Create(ctx, o); err != nil {
			return fmt.Errorf("binding %s to %s: %w", ManagerRoleFile, e.OperatorUser, err)
		}
	}
	return nil
}

func (e *Env) subject() rbacv1.Subject {
	return rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: e.OperatorUser}
}

// GrantLeaderElection creates namespace unless it exists, and binds the Role of
// LeaderElectionRoleFile in it to the operator's user, so that the operator can elect a leader
// there. Granting the same namespace again is harmless.
func (e *Env) GrantLeaderElection(ctx context.Context, namespace string) error {
	if err := e.Client.Create(ctx, Namespace(namespace)); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", namespace, err)
	}
	role, err := ReadRole(filepath.Join(e.Root, LeaderElectionRoleFile))
	if err != nil {
		return err
	}
	obj, err := role.Object(role.Name, namespace)
	if err != nil {
		return fmt.Errorf("%s: %w", LeaderElectionRoleFile, err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: e.OperatorUser, Namespace: namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: role.Kind, Name: role.Name},
		Subjects:   []rbacv1.Subject{e.subject()},
	}
	for _, o := range []client.Object{obj, binding} {
		if err := e.Client.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("granting leader election in %s to %s: %w", namespace, e.OperatorUser, err)
		}
	}
	return nil
}

// AdminKubeconfig returns a kubeconfig that authenticates as an administrator, for kubectl,
// helm or a process of the test's own.
func (e *Env) AdminKubeconfig() []byte {
	return slices.Clone(e.Environment.KubeConfig)
}

// OperatorKubeconfig returns a kubeconfig that authenticates as OperatorUser, for an operator
// run as a process of its own.
func (e *Env) OperatorKubeconfig() ([]byte, error) {
	kc, err := e.operator.KubeConfig()
	if err != nil {
		return nil, fmt.Errorf("writing the operator's kubeconfig: %w", err)
	}
	return kc, nil
}

// Stop stops the API server and etcd.
func (e *Env) Stop() error {
	if err := e.Environment.Stop(); err != nil {
		return fmt.Errorf("stopping the control plane: %w", err)
	}
	return nil
}
