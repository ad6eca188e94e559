package controllers_test

import (
	"fmt"
	"net/http"
	"slices"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/controllers"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// The fault matrix. Invariants checked for every fault:
//  1. the ConfigMap changes only after a complete, successful listing: while a fault lasts it keeps
//     the last good data, byte for byte and at the same resourceVersion;
//  2. a failing selector backs off: its KMS calls stay within what the backoff schedule allows
//     (controllers.MaxSyncAttempts, derived from the real backoff function) times what one
//     listing costs under the fault;
//  3. the failure shows as Ready=False with a specific reason and a message naming the cause, and
//     a Warning event with that reason; once the fault clears the selector recovers by itself
//     within one backoff step.

// suiteRefresh is the refresh interval of selectors that do not set one: the backoff's ceiling.
const suiteRefresh = 5 * time.Minute

// matrixKeys need three pages of matrixPageSize, so that faults between pages can happen.
var matrixKeys = kmstest.GenerateKeys(25, map[string]string{"matrix": "yes"})

const matrixPageSize = 10

// matrixRow is one KMS-side fault.
type matrixRow struct {
	inject func(f *fixture)
	// clear ends the fault; nil means ClearFaults.
	clear func(f *fixture)
	// reason is the Ready reason while the fault lasts; Synced when the client rides it out.
	reason string
	// message holds substrings of the condition message that name the cause.
	message []string
	// calls is the most KMS calls one listing makes under the fault (for Synced rows: exactly).
	calls int
	// attempt is the longest one failing listing takes.
	attempt time.Duration
}

func matrixFault(fl kmstest.Fault) func(f *fixture) {
	return func(f *fixture) {
		GinkgoHelper()
		Expect(f.kms.InjectFault(fl)).To(Succeed())
	}
}

// deleteAtCleanup deletes the selector when the test ends, so that it stops calling KMS.
func deleteSelectorAtCleanup(sel *kmsv1alpha1.KmsKeySelector) {
	DeferCleanup(func() {
		Expect(client.IgnoreNotFound(k8sClient.Delete(ctx(), sel))).To(Succeed())
	})
}

// warnings returns a function that lists the Warning events about a selector, for Eventually.
func selectorWarnings(sel *kmsv1alpha1.KmsKeySelector) func(Gomega) []eventsv1.Event {
	return func(g Gomega) []eventsv1.Event {
		list := &eventsv1.EventList{}
		g.Expect(k8sClient.List(ctx(), list, client.InNamespace(sel.Namespace))).To(Succeed())
		var out []eventsv1.Event
		for _, e := range list.Items {
			if e.Regarding.Kind == "KmsKeySelector" && e.Regarding.Name == sel.Name && e.Type == corev1.EventTypeWarning {
				out = append(out, e)
			}
		}
		return out
	}
}

// warningWith matches a Warning event with reason whose note contains text.
func warningWith(reason, text string) OmegaMatcher {
	return And(HaveField("Reason", reason), HaveField("Note", ContainSubstring(text)))
}

// keepsConfigMap returns a function that fails unless the ConfigMap is exactly good: same data, same
// resourceVersion (so not even rewritten with the same data).
func (f *fixture) keepsConfigMap(good *corev1.ConfigMap) func(Gomega) {
	return func(g Gomega) {
		cm := f.configMap(good.Name)(g)
		g.Expect(cm.Data).To(Equal(good.Data))
		g.Expect(cm.ResourceVersion).To(Equal(good.ResourceVersion))
	}
}

// waitQuiet waits until the emulator has had no request for 300ms, so that a count starts from
// rest: a sync that wrote the ConfigMap can be followed by another listing (see the report on
// stale cache reads).
func (f *fixture) waitQuiet() {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		n := f.kms.Stats().Total
		g.Consistently(func() int64 { return f.kms.Stats().Total }, 300*time.Millisecond, 50*time.Millisecond).Should(Equal(n))
	}).Should(Succeed())
}

// kmsRequestsSince returns the emulator's records of the requests received since t.
func (f *fixture) kmsRequestsSince(t time.Time) []kmstest.RequestRecord {
	var out []kmstest.RequestRecord
	for _, r := range f.kms.Requests() {
		if !r.Time.Before(t) {
			out = append(out, r)
		}
	}
	return out
}

// expectBackedOff asserts that the calls made since start stay within the backoff schedule,
// and returns them.
func expectBackedOff(f *fixture, start time.Time, before int64, perListing int, ceiling time.Duration) int64 {
	GinkgoHelper()
	calls := f.kms.Stats().Total - before
	window := time.Since(start)
	attempts := controllers.MaxSyncAttempts(window, testBackoff, ceiling)
	bound := int64(attempts * perListing)
	Expect(calls).To(BeNumerically("<=", bound),
		"%d KMS calls in %v; the backoff allows at most %d listings of at most %d calls", calls, window, attempts, perListing)
	GinkgoWriter.Printf("KMS calls during the fault: %d in %v (bound %d = %d listings x %d calls)\n", calls, window.Round(time.Millisecond), bound, attempts, perListing)
	AddReportEntry("KMS calls", fmt.Sprintf("%d in %v, bound %d (%d listings x %d)", calls, window.Round(time.Millisecond), bound, attempts, perListing))
	return calls
}

// expectSpacedByBackoff asserts, for faults that cost one call per listing, that consecutive
// listings are at least the shortest delay of their backoff step apart: the delay doubles.
func expectSpacedByBackoff(records []kmstest.RequestRecord, ceiling time.Duration) {
	GinkgoHelper()
	for i := 1; i < len(records); i++ {
		gap := records[i].Time.Sub(records[i-1].Time)
		lo, _ := controllers.BackoffRange(i, testBackoff, ceiling)
		Expect(gap).To(BeNumerically(">=", lo), "listing %d came %v after the previous one; backoff step %d waits at least %v", i+1, gap, i, lo)
	}
}

var _ = Describe("Fault matrix", func() {
	DescribeTable("KMS faults: the ConfigMap keeps the last good data, calls are bounded, the selector recovers",
		func(row matrixRow) {
			f := newFixture(kmstest.WithKeys(matrixKeys...))
			sel := f.create(f.selector("matrix", func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.PageSize = ptr.To[int32](matrixPageSize) }))
			deleteSelectorAtCleanup(sel)
			Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
			good := f.configMap("matrix")(Default)
			Expect(good.Data).To(HaveLen(len(matrixKeys) + 1))
			f.waitQuiet()

			if row.reason == kmsv1alpha1.ReasonSynced {
				// KMS does not change: a listing that lost or doubled a key would change the ConfigMap.
				before := f.kms.Stats()
				row.inject(f)
				forceSync(sel)
				waitSynced(sel)
				Expect(readyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonSynced))
				Expect(f.configMap("matrix")(Default).Data).To(Equal(good.Data))
				Expect(keysJSON(f.configMap("matrix")(Default))).To(HaveLen(len(matrixKeys)), "keys.json holds a key twice")
				f.waitQuiet()
				after := f.kms.Stats()
				Expect(after.FaultsApplied-before.FaultsApplied).To(BeNumerically(">=", 1), "the fault never fired")
				Expect(after.Total - before.Total).To(Equal(int64(row.calls)))
				AddReportEntry("KMS calls", fmt.Sprintf("%d for the sync, fault applied %d times", after.Total-before.Total, after.FaultsApplied-before.FaultsApplied))
				return
			}

			// KMS changes during the fault; the ConfigMap may show it only after a complete listing.
			disabled := matrixKeys[3]
			disabled.State = kms.StateDisabled
			Expect(f.kms.SetKeyState(disabled.ID, kms.StateDisabled)).To(Succeed())
			want := statesOf(append(slices.Concat(matrixKeys[:3], matrixKeys[4:]), disabled)...)

			before := f.kms.Stats()
			start := time.Now()
			row.inject(f)
			forceSync(sel)

			Eventually(readyReason(sel)).Should(Equal(row.reason))
			cond := readyCondition(sel)
			Expect(cond.Status).To(Equal(metav1.ConditionFalse))
			for _, m := range row.message {
				Expect(cond.Message).To(ContainSubstring(m))
			}
			Eventually(selectorWarnings(sel)).Should(ContainElement(warningWith(row.reason, row.message[0])))
			Consistently(f.keepsConfigMap(good)).Should(Succeed())
			Expect(f.kmsRequestsSince(start)).To(ContainElement(Or(HaveField("Fault", Not(BeEmpty())), HaveField("Status", Not(Equal(http.StatusOK))))),
				"the fault never fired")
			calls := expectBackedOff(f, start, before.Total, row.calls, suiteRefresh)
			Expect(calls).To(BeNumerically(">=", 1))
			if row.calls == 1 {
				expectSpacedByBackoff(f.kmsRequestsSince(start), suiteRefresh)
			}

			if row.clear != nil {
				row.clear(f)
			} else {
				f.kms.ClearFaults()
			}
			Eventually(readyReason(sel), controllers.RecoveryTimeout(time.Since(start), testBackoff, suiteRefresh, row.attempt)).
				Should(Equal(kmsv1alpha1.ReasonSynced))
			Expect(f.states("matrix")(Default)).To(Equal(want))
			AddReportEntry("recovered after", time.Since(start).Round(time.Millisecond).String())
		},
		Entry("429 without Retry-After", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultThrottle}),
			reason: kmsv1alpha1.ReasonKMSThrottled, message: []string{"http 429", "APIGW.0308"}, calls: 2, attempt: time.Second,
		}),
		Entry("429 with Retry-After: 1", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultThrottle, RetryAfter: 1}),
			reason: kmsv1alpha1.ReasonKMSThrottled, message: []string{"http 429", "giving up after 2 attempts"}, calls: 2, attempt: 2 * time.Second,
		}),
		Entry("500 with an HTML body", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultServerError, Status: http.StatusInternalServerError}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"http 500", "Internal Server Error"}, calls: 2, attempt: time.Second,
		}),
		Entry("502 with an HTML body", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultServerError, Status: http.StatusBadGateway}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"http 502", "Bad Gateway"}, calls: 2, attempt: time.Second,
		}),
		Entry("503 with an HTML body", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultServerError, Status: http.StatusServiceUnavailable}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"http 503", "Service Unavailable"}, calls: 2, attempt: time.Second,
		}),
		Entry("a dropped connection", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultDrop}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"request failed", "EOF"}, calls: 2, attempt: time.Second,
		}),
		Entry("latency beyond the 2s request timeout", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultLatency, Delay: 3 * time.Second}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"timed out after 2s"}, calls: 2, attempt: 4500 * time.Millisecond,
		}),
		Entry("malformed JSON", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultMalformedJSON}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"decode response"}, calls: 2, attempt: time.Second,
		}),
		Entry("truncated JSON", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultTruncatedJSON}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"decode response"}, calls: 2, attempt: time.Second,
		}),
		// Each pass reads page 1 (fine) and page 2 (drifted), and the client makes 4 passes.
		Entry("total_count growing between pages", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultTotalDrift, Delta: 1}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"listing inconsistent", "total_count changed from 25 to 26"}, calls: 8, attempt: time.Second,
		}),
		Entry("total_count shrinking between pages", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultTotalDrift, Delta: -1}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"listing inconsistent", "total_count changed from 25 to 24"}, calls: 8, attempt: time.Second,
		}),
		// Page 2 starts one key early, so key 10 appears twice and key 20 would be lost: the client
		// counts 24 distinct keys for total_count 25, lists again (3 more calls) and gets all 25.
		Entry("the same key on two pages, once (a key would be lost)", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultDuplicate, Times: 1}),
			reason: kmsv1alpha1.ReasonSynced, calls: 6,
		}),
		// Pages 2 and 3 both start one key early: keys 10 and 20 appear twice, none is lost.
		Entry("the same key on two pages, every time (nothing lost)", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultDuplicate}),
			reason: kmsv1alpha1.ReasonSynced, calls: 3,
		}),
		Entry("an empty page while total_count is not zero", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultEmptyPage}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"listing inconsistent", "empty page at offset 0 of total_count 25"}, calls: 4, attempt: time.Second,
		}),
		Entry("403 KMS.0303, the token expired", matrixRow{
			inject: func(f *fixture) { f.kms.ExpireToken(f.token) },
			clear:  func(f *fixture) { f.kms.AddToken(f.token) },
			reason: kmsv1alpha1.ReasonCredentialsInvalid, message: []string{"KMS.0303", "http 403"}, calls: 1, attempt: time.Second,
		}),
		Entry("400 KMS.0202", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultKMSError, Code: "KMS.0202"}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"KMS.0202", "http 400"}, calls: 1, attempt: time.Second,
		}),
	)

	It("does not call KMS again before a 429's Retry-After has passed", func() {
		const retryAfter = 2 * time.Second
		f := newFixture(kmstest.WithKeys(matrixKeys[:2]...))
		sel := f.create(f.selector("retry-after"))
		deleteSelectorAtCleanup(sel)
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		f.waitQuiet()

		start := time.Now()
		Expect(f.kms.InjectFault(kmstest.Fault{Kind: kmstest.FaultThrottle, RetryAfter: int(retryAfter / time.Second)})).To(Succeed())
		forceSync(sel)
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonKMSThrottled))
		// The client waits Retry-After between its own attempts; the next listing must too.
		Eventually(func() int { return len(f.kmsRequestsSince(start)) }, 3*retryAfter).Should(BeNumerically(">=", 3))
		records := f.kmsRequestsSince(start)
		for i := 1; i < len(records); i++ {
			Expect(records[i].Time.Sub(records[i-1].Time)).To(BeNumerically(">=", retryAfter),
				"request %d came %v after a 429 that said Retry-After: %d", i+1, records[i].Time.Sub(records[i-1].Time), int(retryAfter/time.Second))
		}
	})

	It("calls KMS with a broken credential no more than a healthy selector plus the early backoff steps", func() {
		const interval = 10 * time.Second
		withInterval := func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.RefreshInterval = &metav1.Duration{Duration: interval} }
		healthy := newFixture(kmstest.WithKeys(matrixKeys[:2]...))
		broken := newFixture(kmstest.WithKeys(matrixKeys[:2]...))
		broken.putSecret(map[string]string{"token": "not-" + broken.token})

		start := time.Now()
		deleteSelectorAtCleanup(healthy.create(healthy.selector("healthy", withInterval)))
		deleteSelectorAtCleanup(broken.create(broken.selector("broken", withInterval)))
		early := controllers.EarlyBackoffSteps(testBackoff, interval)
		Consistently(func(g Gomega) {
			h, b := healthy.kms.Stats().Total, broken.kms.Stats().Total
			g.Expect(b).To(BeNumerically("<=", h+int64(early)), "broken %d, healthy %d, early steps %d", b, h, early)
			g.Expect(b).To(BeNumerically("<=", controllers.MaxSyncAttempts(time.Since(start), testBackoff, interval)))
		}, 4*time.Second, 100*time.Millisecond).Should(Succeed())
		h, b := healthy.kms.Stats().Total, broken.kms.Stats().Total
		Expect(b).To(BeNumerically(">", h), "the broken selector was never retried")
		Expect(broken.kms.Stats().ByStatus[http.StatusForbidden]).To(Equal(b))
		AddReportEntry("403 vs healthy over 4s", fmt.Sprintf("broken %d calls, healthy %d, early backoff steps %d", b, h, early))
	})
})

var _ = Describe("Kubernetes-side faults", func() {
	// synced returns a fixture and a selector that has synced keys.
	synced := func(name string, keys []kms.Key, mutate ...func(*kmsv1alpha1.KmsKeySelector)) (*fixture, *kmsv1alpha1.KmsKeySelector) {
		GinkgoHelper()
		f := newFixture(kmstest.WithKeys(keys...))
		sel := f.create(f.selector(name, mutate...))
		deleteSelectorAtCleanup(sel)
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		f.waitQuiet()
		return f, sel
	}

	It("reports a deleted Secret without calling KMS, and recovers when it is back", func() {
		f, sel := synced("secret-gone", matrixKeys[:3])
		good := f.configMap("secret-gone")(Default)
		Expect(k8sClient.Delete(ctx(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secretName, Namespace: f.ns}})).To(Succeed())
		Expect(f.kms.DeleteKey(matrixKeys[0].ID)).To(BeTrue())
		before, start := f.kms.Stats().Total, time.Now()
		forceSync(sel)

		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsNotFound))
		Expect(readyCondition(sel).Message).To(And(ContainSubstring(`secret "kms-credentials"`), ContainSubstring(f.ns)))
		Eventually(selectorWarnings(sel)).Should(ContainElement(warningWith(kmsv1alpha1.ReasonCredentialsNotFound, `secret "kms-credentials"`)))
		Consistently(f.keepsConfigMap(good)).Should(Succeed())
		Expect(f.kms.Stats().Total).To(Equal(before), "KMS was called without credentials")

		// Secrets are not watched: the backoff's retry finds it.
		f.putSecret(map[string]string{"token": f.token})
		Eventually(readyReason(sel), controllers.RecoveryTimeout(time.Since(start), testBackoff, suiteRefresh, 0)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.states("secret-gone")(Default)).To(Equal(statesOf(matrixKeys[1:3]...)))
	})

	It("reads a rotated Secret at the next listing, and recovers from a revoked credential once the Secret is rotated", func() {
		f, sel := synced("rotate", matrixKeys[:3])
		good := f.configMap("rotate")(Default)

		By("rotating before KMS revokes the old token: no failure at all")
		f.kms.AddToken("rotated-1")
		f.putSecret(map[string]string{"token": "rotated-1"})
		f.kms.RemoveToken(f.token)
		forceSync(sel)
		waitSynced(sel)
		Expect(readyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.kms.Requests()).To(HaveEach(HaveField("Status", http.StatusOK)))

		By("KMS revoking the token before the Secret is rotated")
		f.kms.RemoveToken("rotated-1")
		Expect(f.kms.DeleteKey(matrixKeys[0].ID)).To(BeTrue())
		before, start := f.kms.Stats().Total, time.Now()
		forceSync(sel)
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsInvalid))
		Expect(readyCondition(sel).Message).To(And(ContainSubstring("KMS.0302"), Not(ContainSubstring("rotated-1"))))
		Eventually(selectorWarnings(sel)).Should(ContainElement(warningWith(kmsv1alpha1.ReasonCredentialsInvalid, "KMS.0302")))
		Consistently(f.keepsConfigMap(good)).Should(Succeed())
		expectBackedOff(f, start, before, 1, suiteRefresh)
		expectSpacedByBackoff(f.kmsRequestsSince(start), suiteRefresh)

		f.kms.AddToken("rotated-2")
		f.putSecret(map[string]string{"token": "rotated-2"})
		Eventually(readyReason(sel), controllers.RecoveryTimeout(time.Since(start), testBackoff, suiteRefresh, 0)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.states("rotate")(Default)).To(Equal(statesOf(matrixKeys[1:3]...)))
	})

	It("reports a Secret that lost a key without calling KMS, and recovers when the key is back", func() {
		f := newFixture(kmstest.WithKeys(matrixKeys[:3]...), kmstest.WithAKSK("AKMATRIX0001", "matrix-secret-key", ""))
		f.putSecret(map[string]string{"accessKey": "AKMATRIX0001", "secretKey": "matrix-secret-key"})
		sel := f.create(f.selector("lost-key"))
		deleteSelectorAtCleanup(sel)
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		f.waitQuiet()
		good := f.configMap("lost-key")(Default)

		f.putSecret(map[string]string{"accessKey": "AKMATRIX0001"})
		before, start := f.kms.Stats().Total, time.Now()
		forceSync(sel)
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsInvalid))
		Expect(readyCondition(sel).Message).To(ContainSubstring(`"secretKey" is missing`))
		Eventually(selectorWarnings(sel)).Should(ContainElement(warningWith(kmsv1alpha1.ReasonCredentialsInvalid, `"secretKey" is missing`)))
		Consistently(f.keepsConfigMap(good)).Should(Succeed())
		Expect(f.kms.Stats().Total).To(Equal(before))

		f.putSecret(map[string]string{"accessKey": "AKMATRIX0001", "secretKey": "matrix-secret-key"})
		Eventually(readyReason(sel), controllers.RecoveryTimeout(time.Since(start), testBackoff, suiteRefresh, 0)).Should(Equal(kmsv1alpha1.ReasonSynced))
	})

	It("repairs an edited or deleted ConfigMap from the last good listing while KMS is down", func() {
		f, sel := synced("repair-outage", matrixKeys[:3])
		good := f.configMap("repair-outage")(Default)
		data := func(g Gomega) map[string]string { return f.configMap("repair-outage")(g).Data }

		Expect(f.kms.InjectFault(kmstest.Fault{Kind: kmstest.FaultServerError})).To(Succeed())
		Expect(f.kms.DeleteKey(matrixKeys[0].ID)).To(BeTrue())
		before, start := f.kms.Stats().Total, time.Now()
		forceSync(sel)
		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonKMSRequestFailed))

		By("an edit")
		cm := f.configMap("repair-outage")(Default)
		cm.Data[matrixKeys[1].ID] = "Tampered"
		delete(cm.Data, matrixKeys[2].ID)
		cm.Data["extra"] = "added by someone"
		Expect(k8sClient.Update(ctx(), cm)).To(Succeed())
		Eventually(data).Should(Equal(good.Data))

		By("a deletion")
		Expect(k8sClient.Delete(ctx(), cm)).To(Succeed())
		Eventually(data).Should(Equal(good.Data))
		Consistently(data).Should(Equal(good.Data))
		Expect(readyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonKMSRequestFailed))
		expectBackedOff(f, start, before, 2, suiteRefresh)

		f.kms.ClearFaults()
		Eventually(readyReason(sel), controllers.RecoveryTimeout(time.Since(start), testBackoff, suiteRefresh, time.Second)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.states("repair-outage")(Default)).To(Equal(statesOf(matrixKeys[1:3]...)))
	})

	It("never touches a pre-existing ConfigMap it does not own, and lists only once it is gone", func() {
		f := newFixture(kmstest.WithKeys(matrixKeys[:3]...))
		foreign := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "unowned", Namespace: f.ns}, Data: map[string]string{"owner": "someone else"}}
		Expect(k8sClient.Create(ctx(), foreign)).To(Succeed())
		// One labelled as the operator's, but for another selector.
		other := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "other-selectors", Namespace: f.ns, Labels: map[string]string{
			kmsv1alpha1.ManagedByLabel: kmsv1alpha1.ManagedByValue, kmsv1alpha1.SelectorLabel: "someone-else",
		}}, Data: map[string]string{"owner": "another selector"}}
		Expect(k8sClient.Create(ctx(), other)).To(Succeed())
		start := time.Now()
		sel := f.create(f.selector("unowned"))
		deleteSelectorAtCleanup(sel)
		sel2 := f.create(f.selector("second", func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.Target.ConfigMapName = "other-selectors" }))
		deleteSelectorAtCleanup(sel2)

		for _, s := range []*kmsv1alpha1.KmsKeySelector{sel, sel2} {
			Eventually(readyReason(s)).Should(Equal(kmsv1alpha1.ReasonTargetConflict))
			Expect(readyCondition(s).Message).To(ContainSubstring("is not managed by this selector"))
			Eventually(selectorWarnings(s)).Should(ContainElement(warningWith(kmsv1alpha1.ReasonTargetConflict, "is not managed by this selector")))
		}
		Consistently(f.keepsConfigMap(f.configMap("unowned")(Default))).Should(Succeed())
		Expect(f.configMap("other-selectors")(Default).Data).To(Equal(other.Data))
		Expect(f.kms.Stats().Total).To(BeZero(), "KMS was listed for a ConfigMap the selector cannot write")

		Expect(k8sClient.Delete(ctx(), foreign)).To(Succeed())
		Eventually(readyReason(sel), controllers.RecoveryTimeout(time.Since(start), testBackoff, suiteRefresh, 0)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.states("unowned")(Default)).To(Equal(statesOf(matrixKeys[:3]...)))
	})

	// The operator writes with server-side apply and ForceOwnership, without a resourceVersion, so
	// the API server never answers it 409: field conflicts are forced, and there is no optimistic
	// lock to lose. The closest real thing is another field manager taking one of its fields.
	It("takes its fields back from another field manager, without calling KMS", func() {
		f, sel := synced("contested", matrixKeys[:3])
		good := f.configMap("contested")(Default)
		calls := f.kms.Stats().Total
		contested := matrixKeys[1].ID

		By("another manager applying without force gets the 409")
		intrusion := corev1ac.ConfigMap("contested", f.ns).WithData(map[string]string{contested: "Tampered", "foreign": "x"})
		err := k8sClient.Apply(ctx(), intrusion, client.FieldOwner("intruder"))
		Expect(apierrors.IsConflict(err)).To(BeTrue(), "want 409 Conflict, got %v", err)
		Expect(err.Error()).To(ContainSubstring(`conflict with "kms-key-sync"`))

		By("forcing, it takes the field; the operator takes it back")
		Expect(k8sClient.Apply(ctx(), intrusion, client.FieldOwner("intruder"), client.ForceOwnership)).To(Succeed())
		Eventually(func(g Gomega) {
			cm := f.configMap("contested")(g)
			g.Expect(cm.Data).To(Equal(good.Data))
			for _, mf := range cm.ManagedFields {
				if mf.Manager == "intruder" && mf.FieldsV1 != nil {
					g.Expect(mf.FieldsV1.GetRawString()).NotTo(ContainSubstring(contested), "the intruder still owns the entry")
				}
			}
		}).Should(Succeed())
		Expect(readyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.kms.Stats().Total).To(Equal(calls))
	})

	It("writes nothing for a selector deleted while its listing is in flight, and keeps serving the others", func() {
		f := newFixture(kmstest.WithKeys(matrixKeys[:3]...))
		Expect(f.kms.InjectFault(kmstest.Fault{Kind: kmstest.FaultLatency, Delay: 1500 * time.Millisecond, Times: 2})).To(Succeed())
		// Different page sizes, so that the two listings are not coalesced into one.
		doomed := f.create(f.selector("doomed-delete", func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.PageSize = ptr.To[int32](100) }))
		retained := f.create(f.selector("doomed-retain", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.PageSize = ptr.To[int32](200)
			s.Spec.Target.DeletionPolicy = kmsv1alpha1.DeletionPolicyRetain
		}))
		Eventually(func() int64 { return f.kms.Stats().FaultsApplied }).Should(Equal(int64(2)), "both listings in flight")
		Expect(k8sClient.Delete(ctx(), doomed)).To(Succeed())
		Expect(k8sClient.Delete(ctx(), retained)).To(Succeed())
		Eventually(func() int64 { return f.kms.Stats().ByStatus[http.StatusOK] }, 5*time.Second).Should(Equal(int64(2)), "both listings answered")

		survivor := f.create(f.selector("survivor"))
		deleteSelectorAtCleanup(survivor)
		Eventually(readyReason(survivor)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.states("survivor")(Default)).To(Equal(statesOf(matrixKeys[:3]...)))

		Consistently(func(g Gomega) {
			for _, name := range []string{"doomed-delete", "doomed-retain"} {
				err := k8sClient.Get(ctx(), types.NamespacedName{Namespace: f.ns, Name: name}, &corev1.ConfigMap{})
				g.Expect(err).To(Satisfy(apierrors.IsNotFound), "ConfigMap %q was written after its selector was deleted", name)
			}
		}).Should(Succeed())
	})

	It("lists again at once when the spec of a synced selector changes", func() {
		f, sel := synced("respec", []kms.Key{keyA, keyB, keyC}, withTags(tag("env", "prod")))
		Expect(f.states("respec")(Default)).To(Equal(statesOf(keyA, keyB)))
		Eventually(func(g Gomega) {
			cur := get(sel)(g)
			cur.Spec.Tags = []kmsv1alpha1.TagSelector{tag("env", "staging")}
			g.Expect(k8sClient.Update(ctx(), cur)).To(Succeed())
		}).Should(Succeed())
		// The refresh interval is 5 minutes: only a listing prompted by the change gets there.
		Eventually(f.states("respec"), 5*time.Second).Should(Equal(statesOf(keyC)),
			"the ConfigMap still holds the keys of the old spec while the status says generation %d was observed", get(sel)(Default).Status.ObservedGeneration)
		Expect(get(sel)(Default).Status.KeyCount).To(Equal(ptr.To[int32](1)))
	})
})
