package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/operator"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

// TestDemo runs the demo as `make demo-up` does, and checks what it showed: the key the demo
// disabled reaches the ConfigMap as Disabled and the operator says so in an event. Then, as a
// reader of its output would, it applies the try-it-yourself manifests exactly as printed and
// reads the metrics it points to, and stops it as Ctrl-C does.
func TestDemo(t *testing.T) {
	out := &testkit.Buffer{} // the demo writes it while the test reads it
	ctx, interrupt := context.WithCancel(t.Context())
	dir := t.TempDir()
	o := options{root: "../..", keepRunning: true, kubeconfig: filepath.Join(dir, "kubeconfig"), kmsCA: filepath.Join(dir, "ca.pem")}
	type outcome struct {
		res result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := run(ctx, o, out)
		done <- outcome{res, err}
	}()
	var ran outcome
	stopped := false
	stop := func() { // as Ctrl-C does; run cleans up before it returns
		if !stopped {
			interrupt()
			ran, stopped = <-done, true
		}
	}
	defer stop()
	select {
	case ran = <-done:
		stopped = true
		t.Fatalf("the demo ended before it served kubectl: %v\n%s", ran.err, out.String())
	case <-waitFor(out, "Press Ctrl-C"):
	case <-time.After(stepsTimeout + waitTimeout):
		t.Fatalf("the demo did not reach the point where it serves kubectl:\n%s", out.String())
	}
	tryPrintedManifests(t, out.String(), o.kubeconfig)
	stop()
	t.Log("demo output:\n" + out.String())
	if ran.err != nil {
		t.Fatalf("demo failed: %v", ran.err)
	}
	res := ran.res

	if res.disabledKey == "" {
		t.Fatal("the demo disabled no key")
	}
	if got := res.data[res.disabledKey]; got != kms.StateDisabled.String() {
		t.Errorf("ConfigMap entry %s = %q, want Disabled", res.disabledKey, got)
	}
	var records []struct{ ID, Alias, State string }
	if err := json.Unmarshal([]byte(res.data["keys.json"]), &records); err != nil {
		t.Fatalf("keys.json: %v", err)
	}
	i := slices.IndexFunc(records, func(r struct{ ID, Alias, State string }) bool { return r.ID == res.disabledKey })
	if i < 0 || records[i].State != kms.StateDisabled.String() || records[i].Alias != "payments-db" {
		t.Errorf("keys.json does not show %s (payments-db) as Disabled: %s", res.disabledKey, res.data["keys.json"])
	}
	if !slices.Contains(res.eventReasons, "KeyDisabled") {
		t.Errorf("events %v hold no KeyDisabled", res.eventReasons)
	}
	if len(res.shared) < 2 {
		t.Errorf("step 7 shared the ClusterKmsProvider with %d selectors, want at least 2", len(res.shared))
	}
	for _, sel := range res.shared {
		if c := testkit.ReadyCondition(sel); c == nil || c.Reason != "Synced" {
			t.Errorf("shared selector %s/%s is not Synced: %v", sel.Namespace, sel.Name, c)
		}
	}
	k := res.keyless
	if c := testkit.ReadyCondition(k.selector); k.selector == nil || c == nil || c.Reason != "Synced" {
		t.Errorf("the keyless selector is not Synced: %v", c)
	}
	if k.secrets != 0 || k.exchanges != 1 || !k.signed {
		t.Errorf("keyless step: %d Secrets, %d exchanges, all signed %v; want 0 Secrets, 1 exchange, every request signed", k.secrets, k.exchanges, k.signed)
	}
	if res.applyToConfigMap <= 0 || res.applyToConfigMap > waitTimeout {
		t.Errorf("apply to ConfigMap took %s", res.applyToConfigMap)
	}
	for _, want := range []string{"[9/9] Cleaning up", "IAM emulator stopped", "kubectl get kmsproviders,kks -n orders", "orders-kms", "operator stopped", "KMS emulator stopped", "control plane stopped",
		"NAME", "READY", "REASON", "KEYS", "LAST CHANGE", "AGE", "payments   True",
		"kubectl get clusterkmsproviders,kks -A", "SELECTORS", "platform-kms", "PAYMENTS_DB_KEY_ID: ",
		"kubectl get kms -A", "DEMO_ARGS=-v", "no garbage collector", "Metrics:      http://127.0.0.1:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the output lacks %q", want)
		}
	}
}

// TestRunStopsWhenCancelled checks that an interrupted demo fails and still cleans up.
func TestRunStopsWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	var out bytes.Buffer
	if _, err := run(ctx, options{root: "../.."}, &out); err == nil {
		t.Fatalf("run succeeded with a cancelled context:\n%s", out.String())
	}
	if strings.Contains(out.String(), "[2/9]") {
		t.Errorf("run went past step 1 after being cancelled:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "control plane stopped") {
		t.Errorf("run did not stop the control plane:\n%s", out.String())
	}
}

// tryPrintedManifests applies the try-it-yourself manifests as the demo printed them, with the
// kubeconfig it wrote, and checks that the selector syncs and that the metrics URL and queries
// it printed answer.
func tryPrintedManifests(t *testing.T, printed, kubeconfig string) {
	t.Helper()
	m := regexp.MustCompile(`(?s)\nkubectl apply -f - <<'EOF'\n(.*?)\nEOF\n`).FindStringSubmatch(printed)
	if m == nil {
		t.Fatalf("the output holds no try-it-yourself manifests:\n%s", printed)
	}
	raw, err := os.ReadFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(raw)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: operator.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	var sel *unstructured.Unstructured
	for _, doc := range strings.Split(m[1], "\n---\n") {
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil {
			t.Fatalf("a printed manifest is not YAML: %v\n%s", err, doc)
		}
		if err := client.WithFieldValidation(c, "Strict").Create(t.Context(), obj); err != nil {
			t.Fatalf("applying the printed %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		if obj.GetKind() == "KmsKeySelector" {
			sel = obj
		}
	}
	if sel == nil {
		t.Fatalf("the printed manifests hold no KmsKeySelector:\n%s", m[1])
	}
	got := &kmsv1alpha1.KmsKeySelector{}
	err = poll(t.Context(), "the printed selector to sync", func(ctx context.Context) (bool, error) {
		err := c.Get(ctx, client.ObjectKeyFromObject(sel), got)
		ready := testkit.ReadyCondition(got)
		return err == nil && ready != nil && ready.Reason == kmsv1alpha1.ReasonSynced, err
	})
	if err != nil {
		t.Fatalf("%v: %+v", err, got.Status)
	}
	if n := ptr.Deref(got.Status.KeyCount, 0); n == 0 {
		t.Errorf("the printed selector matched no key: %s", testkit.ReadyCondition(got).Message)
	}

	url := regexp.MustCompile(`Metrics: +(http://\S+/metrics)`).FindStringSubmatch(printed)
	if url == nil {
		t.Fatalf("the output names no metrics URL")
	}
	resp, err := http.Get(url[1])
	if err != nil {
		t.Fatalf("the printed metrics URL: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("the printed metrics URL: status %d, %v", resp.StatusCode, err)
	}
	for _, q := range metricsQueries {
		if !strings.Contains(printed, "grep '^"+q.metric+"'") {
			t.Errorf("the output does not suggest %s", q.metric)
		}
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(q.metric)).Match(body) {
			t.Errorf("the metrics hold no line that %q finds", "^"+q.metric)
		}
	}
}

// waitFor returns a channel closed once the output contains text.
func waitFor(out *testkit.Buffer, text string) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		for !strings.Contains(out.String(), text) {
			time.Sleep(pollInterval)
		}
	}()
	return ch
}
