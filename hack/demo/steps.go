package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/operator"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
)

type samples struct {
	secret   *corev1.Secret
	selector *kmsv1alpha1.KmsKeySelector
}

// loadSamples reads the resources that dir/kustomization.yaml lists: one Secret, one selector.
func loadSamples(dir string) (samples, error) {
	var s samples
	objs, err := readSamples(dir)
	if err != nil {
		return s, err
	}
	for _, obj := range objs {
		switch o := obj.(type) {
		case *corev1.Secret:
			s.secret = o
		case *kmsv1alpha1.KmsKeySelector:
			s.selector = o
		default:
			return s, fmt.Errorf("%s: unexpected sample of kind %T", dir, obj)
		}
	}
	if s.secret == nil || s.selector == nil {
		return s, fmt.Errorf("%s must list a Secret and a KmsKeySelector", filepath.Join(dir, "kustomization.yaml"))
	}
	return s, nil
}

// readSamples decodes every object of the files that dir/kustomization.yaml lists.
func readSamples(dir string) ([]runtime.Object, error) {
	var k struct {
		Resources []string `json:"resources"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err == nil {
		err = yaml.Unmarshal(b, &k)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the samples of %s: %w", dir, err)
	}
	decoder := serializer.NewCodecFactory(operator.Scheme).UniversalDeserializer()
	var out []runtime.Object
	for _, name := range k.Resources {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("reading the samples of %s: %w", dir, err)
		}
		for _, doc := range strings.Split(string(b), "\n---\n") {
			obj, _, err := decoder.Decode([]byte(doc), nil, nil)
			if err != nil {
				return nil, fmt.Errorf("decoding sample %s: %w", name, err)
			}
			out = append(out, obj)
		}
	}
	return out, nil
}

// applySamples creates the namespace, the Secret holding the demo token and the selector pointed
// at the emulator (step 4). It returns the selector and when it was applied.
func (d *demo) applySamples(ctx context.Context, s samples) (*kmsv1alpha1.KmsKeySelector, time.Time, error) {
	d.step(4, "Applying config/samples/ to namespace %q", namespace)
	if err := d.client.Create(ctx, testkit.Namespace(namespace)); err != nil {
		return nil, time.Time{}, fmt.Errorf("creating namespace %s: %w", namespace, err)
	}
	d.printf("namespace/%s created", namespace)

	secret := s.secret.DeepCopy()
	secret.Namespace = namespace
	secret.Data, secret.StringData = nil, map[string]string{kmsv1alpha1.SecretToken: demoToken}
	if err := d.client.Create(ctx, secret); err != nil {
		return nil, time.Time{}, fmt.Errorf("creating secret %s: %w", secret.Name, err)
	}
	d.printf("secret/%s created (the template's placeholders replaced by token: %s)", secret.Name, demoToken)

	sel := s.selector.DeepCopy()
	sel.Namespace = namespace
	sel.Spec.Provider.Endpoint = d.kms.URL
	spec, err := yaml.Marshal(map[string]any{"spec": sel.Spec})
	if err != nil {
		return nil, time.Time{}, err
	}
	applied := time.Now()
	if err := d.client.Create(ctx, sel); err != nil {
		return nil, time.Time{}, fmt.Errorf("creating selector %s: %w", sel.Name, err)
	}
	d.printf("kmskeyselector.kms.keysync.dev/%s created, its endpoint pointed at the emulator:", sel.Name)
	d.block(string(spec), "  ")
	return sel, applied, nil
}

// waitSynced waits for the ConfigMap, then for Ready, and prints both (step 5).
func (d *demo) waitSynced(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, applied time.Time) (map[string]string, time.Duration, error) {
	d.step(5, "Waiting for the operator to sync the selector")
	cm := &corev1.ConfigMap{}
	cmKey := client.ObjectKey{Namespace: namespace, Name: sel.Spec.Target.ConfigMapName}
	err := poll(ctx, "ConfigMap "+cmKey.String(), func(ctx context.Context) (bool, error) {
		err := d.client.Get(ctx, cmKey, cm)
		return err == nil, client.IgnoreNotFound(err)
	})
	if err != nil {
		return nil, 0, fmt.Errorf("%w; selector: %s", err, d.readyCondition(ctx, sel))
	}
	took := time.Since(applied)
	d.printf("ConfigMap %s appeared %s after the selector was applied", cmKey, took.Round(time.Millisecond))
	d.printf("(a cold start: the API server is still warming up its watch of the CRD it installed")
	d.printf("seconds ago, which can add up to 2s; step 6 times a warm sync)")

	err = poll(ctx, "selector "+sel.Name+" to be Ready", func(ctx context.Context) (bool, error) {
		if err := d.client.Get(ctx, client.ObjectKeyFromObject(sel), sel); err != nil {
			return false, err
		}
		c := testkit.ReadyCondition(sel)
		return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == sel.Generation, nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("%w; selector: %s", err, d.readyCondition(ctx, sel))
	}
	fmt.Fprintf(d.out, "\n      $ kubectl get kks -n %s\n", namespace)
	if err := d.printTable(ctx, "/apis/"+kmsv1alpha1.GroupVersion.String()+"/namespaces/"+namespace+"/kmskeyselectors"); err != nil {
		return nil, 0, err
	}
	if err := d.client.Get(ctx, cmKey, cm); err != nil {
		return nil, 0, err
	}
	fmt.Fprintf(d.out, "\n      $ kubectl get configmap %s -n %s -o yaml   # data only\n", cm.Name, namespace)
	for _, k := range slices.Sorted(maps.Keys(cm.Data)) {
		if k != kmsv1alpha1.KeysJSONKey {
			d.printf("%s: %s", k, cm.Data[k])
			continue
		}
		var pretty bytes.Buffer
		if err := json.Indent(&pretty, []byte(cm.Data[k]), "", "  "); err != nil {
			return nil, 0, fmt.Errorf("%s is not JSON: %w", k, err)
		}
		d.printf("%s: |", k)
		d.block(pretty.String(), "  ")
	}
	return cm.Data, took, nil
}

// readyCondition describes the selector's Ready condition, for error messages.
func (d *demo) readyCondition(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second) // ctx may be over
	defer cancel()
	cur := &kmsv1alpha1.KmsKeySelector{}
	if err := d.client.Get(ctx, client.ObjectKeyFromObject(sel), cur); err != nil {
		return err.Error()
	}
	c := testkit.ReadyCondition(cur)
	if c == nil {
		return "no Ready condition yet"
	}
	return fmt.Sprintf("Ready=%s reason=%s: %s", c.Status, c.Reason, c.Message)
}

// printTable prints a list as kubectl get does: the API server renders it as a Table whose
// columns, for a custom resource, are NAME and the CRD's additionalPrinterColumns. A list of
// namespaced objects across namespaces, as kubectl get -A, leads with NAMESPACE.
func (d *demo) printTable(ctx context.Context, path string) error {
	hc, err := rest.HTTPClientFor(d.env.Config)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(d.env.Config.Host, "/")+path+"?includeObject=Metadata", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("getting %s as a table: %w", path, err)
	}
	defer resp.Body.Close()
	var table metav1.Table
	if err := json.NewDecoder(resp.Body).Decode(&table); err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("getting %s as a table: status %d, %v", path, resp.StatusCode, err)
	}
	tw := tabwriter.NewWriter(d.out, 6, 4, 3, ' ', 0)
	var header []string
	for _, c := range table.ColumnDefinitions {
		if c.Priority == 0 {
			header = append(header, strings.ToUpper(c.Name))
		}
	}
	namespaced := false
	for _, row := range table.Rows {
		var m metav1.PartialObjectMetadata
		namespaced = namespaced || (json.Unmarshal(row.Object.Raw, &m) == nil && m.Namespace != "")
	}
	allNamespaces := namespaced && !strings.Contains(path, "/namespaces/")
	if allNamespaces {
		header = append([]string{"NAMESPACE"}, header...)
	}
	fmt.Fprintf(tw, "      %s\n", strings.Join(header, "\t"))
	for _, row := range table.Rows {
		var cells []string
		if allNamespaces {
			var m metav1.PartialObjectMetadata
			_ = json.Unmarshal(row.Object.Raw, &m)
			cells = append(cells, m.Namespace)
		}
		for i, c := range table.ColumnDefinitions {
			if c.Priority == 0 && i < len(row.Cells) {
				cell := "<none>"
				if row.Cells[i] != nil {
					cell = fmt.Sprint(row.Cells[i])
				}
				cells = append(cells, cell)
			}
		}
		fmt.Fprintf(tw, "      %s\n", strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// disableKey disables the first enabled key of the ConfigMap in the emulator, forces a sync and
// waits for the ConfigMap to show it (step 6). It returns the key id and the new data.
func (d *demo) disableKey(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, data map[string]string) (string, map[string]string, error) {
	id := firstEnabled(data)
	key, ok := d.kms.Key(id)
	if !ok {
		return "", nil, fmt.Errorf("the ConfigMap holds no Enabled key that the emulator knows: %v", data)
	}
	d.step(6, "Disabling key %s (%s) in the emulator, then forcing a sync", id, key.Alias)
	if err := d.kms.SetKeyState(id, kms.StateDisabled); err != nil {
		return "", nil, err
	}
	start := time.Now()
	value, err := testkit.ForceSync(ctx, d.client, sel)
	if err != nil {
		return "", nil, err
	}
	d.printf("$ kubectl annotate kks %s -n %s --overwrite %s=%s", sel.Name, namespace, kmsv1alpha1.ForceSyncAnnotation, value)

	cm := &corev1.ConfigMap{}
	err = poll(ctx, "the ConfigMap to show "+id+" as Disabled", func(ctx context.Context) (bool, error) {
		err := d.client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: sel.Spec.Target.ConfigMapName}, cm)
		return err == nil && cm.Data[id] == kms.StateDisabled.String(), err
	})
	if err != nil {
		return "", nil, fmt.Errorf("%w; selector: %s", err, d.readyCondition(ctx, sel))
	}
	took := time.Since(start)
	// The status follows the ConfigMap in the same sync.
	err = poll(ctx, "the selector's status to record the sync", func(ctx context.Context) (bool, error) {
		err := d.client.Get(ctx, client.ObjectKeyFromObject(sel), sel)
		return err == nil && sel.Status.LastHandledForceSync == value && sel.Status.StateCounts != nil, err
	})
	if err != nil {
		return "", nil, err
	}
	d.printf("ConfigMap updated %s after the annotation:", took.Round(time.Millisecond))
	d.printf("- %s: %s", id, data[id])
	d.printf("+ %s: %s", id, cm.Data[id])
	records, err := testkit.KeysJSON(cm)
	if err != nil {
		return "", nil, err
	}
	for _, r := range records {
		if r["id"] == id {
			b, _ := json.Marshal(r)
			d.printf("  %s entry: %s", kmsv1alpha1.KeysJSONKey, b)
		}
	}
	c := sel.Status.StateCounts
	d.printf("selector status: %d keys, %d Enabled, %d Disabled", ptr.Deref(sel.Status.KeyCount, 0), c.Enabled, c.Disabled)
	return id, cm.Data, nil
}

// printEvents waits for the KeyDisabled event naming the key and prints the selector's events.
// The recorder sends events asynchronously, so they may trail the ConfigMap.
func (d *demo) printEvents(ctx context.Context, sel *kmsv1alpha1.KmsKeySelector, id string) ([]string, error) {
	var mine []eventsv1.Event
	err := poll(ctx, "a KeyDisabled event for "+id, func(ctx context.Context) (bool, error) {
		list := &eventsv1.EventList{}
		if err := d.client.List(ctx, list, client.InNamespace(namespace)); err != nil {
			return false, err
		}
		mine = testkit.EventsAbout(list.Items, sel)
		return slices.ContainsFunc(mine, func(e eventsv1.Event) bool {
			return e.Reason == "KeyDisabled" && strings.Contains(e.Note, id)
		}), nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(mine, func(a, b eventsv1.Event) int { return a.EventTime.Compare(b.EventTime.Time) })
	fmt.Fprintf(d.out, "\n      $ kubectl events -n %s --for kks/%s\n", namespace, sel.Name)
	tw := tabwriter.NewWriter(d.out, 6, 4, 3, ' ', 0)
	fmt.Fprintf(tw, "      TYPE\tREASON\tOBJECT\tMESSAGE\n")
	var reasons []string
	for _, e := range mine {
		fmt.Fprintf(tw, "      %s\t%s\t%s/%s\t%s\n", e.Type, e.Reason, e.Regarding.Kind, e.Regarding.Name, e.Note)
		reasons = append(reasons, e.Reason)
	}
	return reasons, tw.Flush()
}

// serveUntilInterrupted writes an administrator's kubeconfig and the emulator's CA, prints what
// to try next, and keeps everything running until Ctrl-C.
func (d *demo) serveUntilInterrupted(interrupted, failed context.Context, sel *kmsv1alpha1.KmsKeySelector, data map[string]string) error {
	path, err := d.writeFile(d.o.kubeconfig, d.env.AdminKubeconfig())
	if err != nil {
		return fmt.Errorf("writing the kubeconfig: %w", err)
	}
	caPath, err := d.writeFile(d.o.kmsCA, d.kms.CertificatePEM())
	if err != nil {
		return fmt.Errorf("writing the emulator's CA: %w", err)
	}
	other := firstEnabled(data)
	if other == "" {
		other = "<key id>"
	}
	fmt.Fprintf(d.out, "\nEverything keeps running. In another terminal:\n\n")
	fmt.Fprintf(d.out, "  export KUBECONFIG=%s\n", path)
	fmt.Fprintf(d.out, "  kubectl get kms -A   # every KmsKeySelector (kks), KmsProvider (kmsp) and ClusterKmsProvider (ckmsp)\n")
	fmt.Fprintf(d.out, "  kubectl get kks -n %s -o wide\n  kubectl get configmap %s -n %s -o yaml\n\n", namespace, sel.Spec.Target.ConfigMapName, namespace)
	fmt.Fprintf(d.out, "Try it yourself: a credentials Secret and a selector of your own, against the emulator.\n")
	fmt.Fprintf(d.out, "Apply them as they are, then edit and apply again:\n\n")
	fmt.Fprintf(d.out, "%s\n", tryItYourself(d.kms.URL, d.kms.ProjectID())) // unindented, to paste into a shell
	fmt.Fprintf(d.out, "\n  kubectl get kks my-keys -n %[1]s -o wide\n  kubectl get configmap my-keys -n %[1]s -o yaml\n", namespace)
	fmt.Fprintf(d.out, "  kubectl describe kks my-keys -n %s   # the Ready message and the events\n\n", namespace)
	fmt.Fprintf(d.out, "KMS emulator: %s (token %s, project %s)\n", d.kms.URL, demoToken, d.kms.ProjectID())
	fmt.Fprintf(d.out, "Admin API:    %s/admin/keys (unauthenticated). Disable another key and resync:\n\n", d.kms.URL)
	fmt.Fprintf(d.out, "  curl -s --cacert %s -X PATCH %s/admin/keys/%s -d '{\"state\": \"Disabled\"}'\n", caPath, d.kms.URL, other)
	fmt.Fprintf(d.out, "  kubectl annotate kks %s -n %s --overwrite %s=\"$(date +%%s)\"\n\n", sel.Name, namespace, kmsv1alpha1.ForceSyncAnnotation)
	fmt.Fprintf(d.out, "Metrics:      %s (plain HTTP on localhost, in the demo only). For example:\n\n", d.metricsURL)
	for _, q := range metricsQueries {
		fmt.Fprintf(d.out, "  curl -s %s | grep '^%s'   # %s\n", d.metricsURL, q.metric, q.meaning)
	}
	fmt.Fprintf(d.out, "\nUnlike a cluster, the demo has no garbage collector (a deleted selector leaves its ConfigMap,\n")
	fmt.Fprintf(d.out, "and deleting a namespace hangs), and it retries failed syncs faster than the defaults.\n")
	fmt.Fprintf(d.out, "Run make demo-up DEMO_ARGS=-v to see the operator's log.\n\n")
	fmt.Fprintf(d.out, "Press Ctrl-C to stop and clean up.\n")
	<-failed.Done() // Ctrl-C, or the operator stopped on its own
	if interrupted.Err() != nil {
		return nil
	}
	return context.Cause(failed)
}

// metricsQueries are the metrics the demo suggests looking at.
var metricsQueries = []struct{ metric, meaning string }{
	{"kms_key_sync_keys{", "keys per selector and state"},
	{"kms_key_sync_syncs_total", "sync attempts, by result"},
	{"kms_key_sync_kms_requests_total", "KMS calls, by operation and outcome"},
}

// tryItYourself is a command that applies a credentials Secret and a selector of the demo's
// namespace, listing from the emulator at endpoint.
func tryItYourself(endpoint, projectID string) string {
	return fmt.Sprintf(`kubectl apply -f - <<'EOF'
apiVersion: v1
kind: Secret
metadata:
  name: my-kms-credentials
  namespace: %[1]s
stringData:
  token: %[2]s
---
apiVersion: kms.keysync.dev/v1alpha1
kind: KmsKeySelector
metadata:
  name: my-keys
  namespace: %[1]s
spec:
  provider:
    endpoint: %[3]s
    projectId: %[4]s
    credentialsSecretRef:
      name: my-kms-credentials
  tags:
  - key: team
    values: [search]
EOF`, namespace, demoToken, endpoint, projectID)
}

// writeFile writes data to name, relative to the root, until the demo cleans up, and returns its
// absolute path.
func (d *demo) writeFile(name string, data []byte) (string, error) {
	if !filepath.IsAbs(name) {
		name = filepath.Join(d.o.root, name)
	}
	path, err := filepath.Abs(name)
	if err == nil {
		err = os.MkdirAll(filepath.Dir(path), 0o755)
	}
	if err == nil {
		err = os.WriteFile(path, data, 0o600)
	}
	if err != nil {
		return "", err
	}
	d.cleanups = append(d.cleanups, func() error {
		d.printf("removed %s", path)
		return os.Remove(path)
	})
	return path, nil
}

// firstEnabled returns the first key id, in order, whose ConfigMap entry is Enabled, or "".
func firstEnabled(data map[string]string) string {
	for _, k := range slices.Sorted(maps.Keys(data)) {
		if data[k] == kms.StateEnabled.String() {
			return k
		}
	}
	return ""
}

// block prints text line by line, indented like printf and then by prefix.
func (d *demo) block(text, prefix string) {
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		d.printf("%s%s", prefix, line)
	}
}
