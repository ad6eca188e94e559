package controllers

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strconv"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

// health is how a GitOps tool shows an object: kstatus's status (Flux, kubectl wait, cli-utils)
// and Argo CD's, with the health check the docs ship.
type health struct {
	kstatus status.Status
	argo    string
}

var (
	healthy     = health{status.CurrentStatus, "Healthy"}
	progressing = health{status.InProgressStatus, "Progressing"}
	degraded    = health{status.FailedStatus, "Degraded"}
)

// wantHealth is, for every reason of the Ready condition, how a GitOps tool must show an object
// whose last attempt ended with it.
var wantHealth = map[string]health{
	kmsv1alpha1.ReasonSynced:                 healthy,
	kmsv1alpha1.ReasonValidated:              healthy,
	kmsv1alpha1.ReasonSuspended:              {status.InProgressStatus, "Suspended"},
	kmsv1alpha1.ReasonCredentialsNotFound:    progressing,
	kmsv1alpha1.ReasonCredentialsInvalid:     progressing,
	kmsv1alpha1.ReasonKMSRequestFailed:       progressing,
	kmsv1alpha1.ReasonKMSThrottled:           progressing,
	kmsv1alpha1.ReasonTargetTooLarge:         progressing,
	kmsv1alpha1.ReasonExpressionFailed:       progressing,
	kmsv1alpha1.ReasonProviderNotFound:       progressing,
	kmsv1alpha1.ReasonIdentityExchangeFailed: progressing,
	kmsv1alpha1.ReasonInvalidSpec:            degraded,
	kmsv1alpha1.ReasonInsecureEndpoint:       degraded,
	kmsv1alpha1.ReasonProviderNotAllowed:     degraded,
	kmsv1alpha1.ReasonTargetConflict:         degraded,
}

// readyReasons reads the names of the Ready condition's reasons from the API package's source,
// so that a reason added there without a row here fails the test.
func readyReasons(t *testing.T) []string {
	t.Helper()
	file, err := parser.ParseFile(token.NewFileSet(), "../api/v1alpha1/conditions.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	ast.Inspect(file, func(n ast.Node) bool {
		spec, ok := n.(*ast.ValueSpec)
		if !ok || len(spec.Values) != 1 || !strings.HasPrefix(spec.Names[0].Name, "Reason") || spec.Names[0].Name == "ReasonProgressing" {
			return true
		}
		if lit, ok := spec.Values[0].(*ast.BasicLit); ok {
			value, _ := strconv.Unquote(lit.Value)
			reasons = append(reasons, value)
		}
		return true
	})
	return reasons
}

func TestGitOpsToolsShowEveryOutcomeAsItsReasonAsks(t *testing.T) {
	script, err := os.ReadFile("../docs/argocd-health.lua")
	if err != nil {
		t.Fatal(err)
	}
	reasons := readyReasons(t)
	if len(reasons) < len(wantHealth) {
		t.Fatalf("read %d reasons from conditions.go, fewer than the table's %d", len(reasons), len(wantHealth))
	}
	for _, reason := range reasons {
		want, ok := wantHealth[reason]
		if !ok {
			t.Errorf("reason %s has no row: say how a GitOps tool must show it", reason)
			continue
		}
		ready := metav1.ConditionFalse
		if want == healthy {
			ready = metav1.ConditionTrue
		}
		for kind, obj := range objectsWithOutcome(ready, reason) {
			t.Run(kind+"/"+reason, func(t *testing.T) {
				if got := gitOpsHealth(t, obj, string(script)); got != want {
					t.Errorf("shown as %+v, want %+v", got, want)
				}
			})
		}
	}
}

func TestGitOpsToolsShowARequestInFlightAsProgressing(t *testing.T) {
	script, err := os.ReadFile("../docs/argocd-health.lua")
	if err != nil {
		t.Fatal(err)
	}
	for kind, obj := range objectsWithOutcome(metav1.ConditionTrue, kmsv1alpha1.ReasonSynced) {
		conditions := conditionsOf(obj)
		setReconciling(conditions, obj.GetGeneration(), "Listing the keys for a force-sync")
		if got := gitOpsHealth(t, obj, string(script)); got != progressing {
			t.Errorf("%s answering a request: shown as %+v, want %+v", kind, got, progressing)
		}
		setOutcome(conditions, obj.GetGeneration(), metav1.ConditionTrue, kmsv1alpha1.ReasonSynced, "done")
		if got := gitOpsHealth(t, obj, string(script)); got != healthy {
			t.Errorf("%s after the outcome: shown as %+v, want %+v", kind, got, healthy)
		}
	}
	sel := selectorWithOutcome(metav1.ConditionTrue, kmsv1alpha1.ReasonSynced)
	sel.Generation++
	if got := gitOpsHealth(t, sel, string(script)); got != progressing {
		t.Errorf("a spec change not yet answered: shown as %+v, want %+v", got, progressing)
	}
}

// objectsWithOutcome returns an object of each kind whose last attempt ended with reason, its
// conditions set by the reconcilers' own code.
func objectsWithOutcome(ready metav1.ConditionStatus, reason string) map[string]client.Object {
	out := map[string]client.Object{"KmsKeySelector": selectorWithOutcome(ready, reason)}
	namespaced := &kmsv1alpha1.KmsProvider{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Generation: 3}}
	cluster := &kmsv1alpha1.ClusterKmsProvider{ObjectMeta: metav1.ObjectMeta{Name: "p", Generation: 3}}
	var r ProviderReconciler
	r.setReady(namespaced, ready, reason, "what happened")
	r.setReady(cluster, ready, reason, "what happened")
	out["KmsProvider"], out["ClusterKmsProvider"] = namespaced, cluster
	return out
}

func selectorWithOutcome(ready metav1.ConditionStatus, reason string) *kmsv1alpha1.KmsKeySelector {
	sel := &kmsv1alpha1.KmsKeySelector{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "ns", Generation: 3}}
	setReady(sel, ready, reason, "what happened")
	return sel
}

func conditionsOf(obj client.Object) *[]metav1.Condition {
	switch o := obj.(type) {
	case *kmsv1alpha1.KmsKeySelector:
		return &o.Status.Conditions
	case *kmsv1alpha1.KmsProvider:
		return &o.Status.Conditions
	case *kmsv1alpha1.ClusterKmsProvider:
		return &o.Status.Conditions
	}
	panic("no conditions")
}

// gitOpsHealth computes obj's health with kstatus and with the Argo CD script, as each tool
// would see the object: as JSON.
func gitOpsHealth(t *testing.T, obj client.Object, script string) health {
	t.Helper()
	raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: raw}
	res, err := status.Compute(u)
	if err != nil {
		t.Fatal(err)
	}
	L := lua.NewState()
	defer L.Close()
	L.SetGlobal("obj", toLua(L, u.Object))
	if err := L.DoString("local function check() " + script + " end\nresult = check()"); err != nil {
		t.Fatal(err)
	}
	hs, ok := L.GetGlobal("result").(*lua.LTable)
	if !ok {
		t.Fatal("the health check returned no table")
	}
	if hs.RawGetString("message").String() == "" {
		t.Error("the health check gave no message")
	}
	return health{kstatus: res.Status, argo: hs.RawGetString("status").String()}
}

// toLua converts decoded JSON into Lua values, as Argo CD hands objects to health checks.
func toLua(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case map[string]any:
		t := L.NewTable()
		for k, e := range v {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	case []any:
		t := L.NewTable()
		for _, e := range v {
			t.Append(toLua(L, e))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	}
	return lua.LNil
}
