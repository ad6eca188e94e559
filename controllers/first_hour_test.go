package controllers_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// What a new user sees of a selector: its columns, its events and its status message.
var _ = Describe("What kubectl shows of a selector", func() {
	It("shows RETRY AT as a time, not <invalid>", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		// An expression that fails waits for the next refresh: the status holds its time.
		sel := f.Create(f.Selector("columns", testkit.WithRefreshInterval(time.Hour), withData(kmsv1alpha1.MergePolicyReplace,
			map[string]string{"DB_KEY_ID": `keys.byAlias("missing").id`})))
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonExpressionFailed))
		next := f.Get(sel)(Default).Status.NextSyncTime
		Expect(next).NotTo(BeNil())

		// kubectl get -o wide asks the API server for a Table and prints its cells; a date
		// column holding a future time prints as <invalid>.
		table := selectorTable(sel)
		col := -1
		for i, c := range table.ColumnDefinitions {
			if c.Name == "Retry At" {
				col = i
				Expect(c.Type).To(Equal("string"))
				Expect(c.Priority).To(Equal(int32(1)), "a -o wide column")
			}
		}
		Expect(col).NotTo(Equal(-1), "a Retry At column")
		Expect(table.Rows).To(HaveLen(1))
		cell, ok := table.Rows[0].Cells[col].(string)
		Expect(ok).To(BeTrue(), "the cell %v is a string", table.Rows[0].Cells[col])
		at, err := time.Parse(time.RFC3339, cell)
		Expect(err).NotTo(HaveOccurred())
		Expect(at).To(BeTemporally("==", next.Time))
		Expect(at).To(BeTemporally(">", time.Now()))
	})

	It("reports the keys listed, not the entries written, for expressions that replace the default entries", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyB, keyC))
		sel := f.Create(f.Selector("replace", testkit.WithTags(testkit.Tag("env", "prod")), func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.Target.MergePolicy = kmsv1alpha1.MergePolicyReplace
			s.Spec.Target.Data = map[string]string{"PAYMENTS_DB_KEY_ID": `keys.byAlias("payments-db").id`}
		}))
		Eventually(f.ReadyCondition(sel)).Should(And(
			HaveField("Reason", kmsv1alpha1.ReasonSynced),
			HaveField("Message", `2 keys matched; ConfigMap "replace" has 1 entry`)))
		Eventually(f.Events(sel)).Should(ConsistOf(
			And(HaveField("Reason", "KeysChanged"), HaveField("Note", "Keys changed: 2 added"))))

		By("disabling a key the selector matches")
		Expect(f.KMS.SetKeyState(keyA.ID, kms.StateDisabled)).To(Succeed())
		f.ForceSync(sel)
		Eventually(f.Events(sel)).Should(ContainElements(
			And(HaveField("Reason", "KeyDisabled"), HaveField("Note", "1 key(s) moved to Disabled: "+keyA.ID)),
			And(HaveField("Reason", "KeysChanged"), HaveField("Note", "Keys changed: 1 changed state"))))
		Eventually(func(g Gomega) int32 { return f.Get(sel)(g).Status.StateCounts.Disabled }).Should(Equal(int32(2)))

		By("an unchanged sync, then a barrier: a key removed")
		f.ForceSync(sel)
		Eventually(f.Handled(sel)).Should(Succeed())
		Expect(f.KMS.DeleteKey(keyB.ID)).To(BeTrue())
		f.ForceSync(sel)
		Eventually(f.Events(sel)).Should(ContainElement(HaveField("Note", "Keys changed: 1 removed")))
		Expect(f.EventReasons(sel)(Default)).To(Equal([]string{"KeyDisabled", "KeysChanged", "KeysChanged", "KeysChanged"}))
	})

	It("says that nothing matched and that tags are case-sensitive", func() {
		f := newFixture(kmstest.WithKeys(keyA, keyD))
		sel := f.Create(f.Selector("capital", testkit.WithTags(testkit.Tag("team", "Search"))))
		Eventually(f.ReadyCondition(sel)).Should(And(
			HaveField("Reason", kmsv1alpha1.ReasonSynced),
			HaveField("Message", And(ContainSubstring("No key matched"), ContainSubstring("case-sensitive")))))
		Expect(f.Get(sel)(Default).Status.KeyCount).To(HaveValue(BeZero()))

		// A key that matches later is the barrier: an event of the first sync would come before it.
		Expect(f.KMS.PutKeys(testkit.Key("0f000000-0000-4000-8000-000000000006", "search-capital", kms.StateEnabled,
			map[string]string{"team": "Search"}))).To(Succeed())
		f.ForceSync(sel)
		// The event is recorded before the status is written.
		Eventually(f.ReadyCondition(sel)).Should(HaveField("Message", `1 key matched; ConfigMap "capital" has 2 entries`))
		Eventually(f.Events(sel)).ShouldNot(BeEmpty())
		Expect(f.Events(sel)(Default)).To(ConsistOf(HaveField("Note", "Keys changed: 1 added")))
	})

	It("names ListKmsByTags in a KMS error", func() {
		f := newFixture(kmstest.WithKeys(keyA))
		f.PutCredentials(map[string]string{kmsv1alpha1.SecretToken: "not-the-token"})
		sel := f.Create(f.Selector("denied"))
		Eventually(f.ReadyCondition(sel)).Should(And(
			HaveField("Reason", kmsv1alpha1.ReasonCredentialsInvalid),
			HaveField("Message", HavePrefix("ListKmsByTags: http 403"))))
	})
})

// selectorTable gets the selector's namespace's selectors as kubectl get does: as a Table.
func selectorTable(sel *kmsv1alpha1.KmsKeySelector) *metav1.Table {
	GinkgoHelper()
	hc, err := rest.HTTPClientFor(env.Config)
	Expect(err).NotTo(HaveOccurred())
	// The host may end in a slash once a client has defaulted the shared config.
	url := strings.TrimSuffix(env.Config.Host, "/") + "/apis/" + kmsv1alpha1.GroupVersion.String() + "/namespaces/" + sel.Namespace + "/kmskeyselectors"
	req, err := http.NewRequestWithContext(ctx(), http.MethodGet, url, nil)
	Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	resp, err := hc.Do(req)
	Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	Expect(err).NotTo(HaveOccurred())
	Expect(resp.StatusCode).To(Equal(http.StatusOK), "%s: %s", url, body)
	table := &metav1.Table{}
	Expect(json.Unmarshal(body, table)).To(Succeed())
	return table
}
