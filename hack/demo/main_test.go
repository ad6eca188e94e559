package main

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

// TestDemo runs the demo's steps, as `make demo` does, and checks what they showed: the key the
// demo disabled reaches the ConfigMap as Disabled and the operator says so in an event.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	res, err := run(t.Context(), options{root: "../.."}, &out)
	t.Log("demo output:\n" + out.String())
	if err != nil {
		t.Fatalf("demo failed: %v", err)
	}

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
		"NAME", "READY", "REASON", "KEYS", "LAST SYNC", "AGE", "payments   True",
		"kubectl get clusterkmsproviders,kks -A", "SELECTORS", "platform-kms", "PAYMENTS_DB_KEY_ID: "} {
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
