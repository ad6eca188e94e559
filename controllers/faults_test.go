package controllers_test

import (
	"fmt"
	"net/http"
	"slices"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/controllers"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
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

// matrixPages is what a listing of matrixKeys costs without a fault: one call per page.
const matrixPages = 3

// matrixRow is one KMS-side fault.
type matrixRow struct {
	inject func(g Gomega, f *testkit.Fixture)
	// clear ends the fault; nil means ClearFaults.
	clear func(g Gomega, f *testkit.Fixture)
	// reason is the Ready reason while the fault lasts; Synced when the client rides it out.
	reason string
	// message holds substrings of the condition message that name the cause.
	message []string
	// calls is the most KMS calls one listing makes under the fault (for Synced rows: exactly).
	calls int
	// attempt is the longest one failing listing takes.
	attempt time.Duration
}

func matrixFault(fl kmstest.Fault) func(g Gomega, f *testkit.Fixture) {
	return func(g Gomega, f *testkit.Fixture) {
		GinkgoHelper()
		g.Expect(f.KMS.InjectFault(fl)).To(Succeed())
	}
}

// warningWith matches a Warning event with reason whose note contains text.
func warningWith(reason, text string) OmegaMatcher {
	return And(HaveField("Reason", reason), HaveField("Note", ContainSubstring(text)))
}

// expectKeptConfigMap fails unless the ConfigMap is exactly good: same data, same resourceVersion
// (so not even rewritten with the same data).
func expectKeptConfigMap(g Gomega, f *testkit.Fixture, good *corev1.ConfigMap) {
	GinkgoHelper()
	cm := f.ConfigMap(good.Name)(g)
	g.Expect(cm.Data).To(Equal(good.Data))
	g.Expect(cm.ResourceVersion).To(Equal(good.ResourceVersion), "ConfigMap %s was written", good.Name)
}

// kmsRequestsSince returns the emulator's records of the requests received since t.
func kmsRequestsSince(f *testkit.Fixture, t time.Time) []kmstest.RequestRecord {
	var out []kmstest.RequestRecord
	for _, r := range f.KMS.Requests() {
		if !r.Time.Before(t) {
			out = append(out, r)
		}
	}
	return out
}

// expectBackedOff asserts that the calls made since start stay within the backoff schedule,
// and returns them.
func expectBackedOff(s specT, f *testkit.Fixture, start time.Time, before int64, perListing int, ceiling time.Duration) int64 {
	GinkgoHelper()
	calls := f.KMS.Stats().Total - before
	window := time.Since(start)
	attempts := controllers.MaxSyncAttempts(window, testBackoff, ceiling)
	bound := int64(attempts * perListing)
	s.Expect(calls).To(BeNumerically("<=", bound),
		"%d KMS calls in %v; the backoff allows at most %d listings of at most %d calls", calls, window, attempts, perListing)
	s.Report("KMS calls", fmt.Sprintf("%d in %v, bound %d (%d listings x %d)", calls, window.Round(time.Millisecond), bound, attempts, perListing))
	return calls
}

// expectSpacedByBackoff asserts, for faults that cost one call per listing, that consecutive
// listings are at least the shortest delay of their backoff step apart: the delay doubles. The
// first answered request starts the listing that recovered, which waited its step too; the
// requests after it are that listing's other pages.
func expectSpacedByBackoff(g Gomega, records []kmstest.RequestRecord, ceiling time.Duration) {
	GinkgoHelper()
	if i := slices.IndexFunc(records, func(r kmstest.RequestRecord) bool { return r.Status == http.StatusOK }); i >= 0 {
		records = records[:i+1]
	}
	for i := 1; i < len(records); i++ {
		gap := records[i].Time.Sub(records[i-1].Time)
		lo, _ := controllers.BackoffRange(i, testBackoff, ceiling)
		g.Expect(gap).To(BeNumerically(">=", lo), "listing %d came %v after the previous one; backoff step %d waits at least %v", i+1, gap, i, lo)
	}
}

// matrixCase runs one row of the fault matrix.
func matrixCase(s specT, row matrixRow) {
	f := fixtureFor(s, kmstest.WithKeys(matrixKeys...))
	sel := f.Create(f.Selector("matrix", func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.PageSize = ptr.To[int32](matrixPageSize) }))
	deleteAtCleanup(s, sel)
	s.Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
	settle(s, f, sel)
	good := f.ConfigMap("matrix")(s)
	s.Expect(good.Data).To(HaveLen(len(matrixKeys) + 1))

	if row.reason == kmsv1alpha1.ReasonSynced {
		// KMS does not change: a listing that lost or doubled a key would change the ConfigMap.
		before := f.KMS.Stats()
		row.inject(s, f)
		f.ForceSync(sel)
		s.Eventually(f.Handled(sel)).Should(Succeed())
		s.Expect(f.ReadyReason(sel)(s)).To(Equal(kmsv1alpha1.ReasonSynced))
		s.Expect(f.ConfigMap("matrix")(s).Data).To(Equal(good.Data))
		s.Expect(f.KeysJSON("matrix")(s)).To(HaveLen(len(matrixKeys)), "keys.json holds a key twice")
		after := f.KMS.Stats()
		s.Expect(after.FaultsApplied-before.FaultsApplied).To(BeNumerically(">=", 1), "the fault never fired")
		s.Expect(after.Total - before.Total).To(Equal(int64(row.calls)))
		// Whatever listing the sync might still cause is made before a later force-sync is
		// answered; with the fault gone, that one costs one clean listing and nothing more.
		f.KMS.ClearFaults()
		f.ForceSync(sel)
		s.Eventually(f.Handled(sel)).Should(Succeed())
		s.Expect(f.KMS.Stats().Total-after.Total).To(Equal(int64(matrixPages)), "KMS was listed again after the sync")
		s.Report("KMS calls", fmt.Sprintf("%d for the sync, fault applied %d times", after.Total-before.Total, after.FaultsApplied-before.FaultsApplied))
		return
	}

	// KMS changes during the fault; the ConfigMap may show it only after a complete listing.
	disabled := matrixKeys[3]
	disabled.State = kms.StateDisabled
	s.Expect(f.KMS.SetKeyState(disabled.ID, kms.StateDisabled)).To(Succeed())
	want := testkit.StatesOf(append(slices.Concat(matrixKeys[:3], matrixKeys[4:]), disabled)...)

	before := f.KMS.Stats()
	start := time.Now()
	row.inject(s, f)
	f.ForceSync(sel)

	s.Eventually(f.ReadyReason(sel)).Should(Equal(row.reason))
	cond := f.ReadyCondition(sel)(s)
	s.Expect(cond.Status).To(Equal(metav1.ConditionFalse))
	for _, m := range row.message {
		s.Expect(cond.Message).To(ContainSubstring(m))
	}
	s.Eventually(f.Warnings(sel)).Should(ContainElement(warningWith(row.reason, row.message[0])))
	// The first backoff retry has failed too: neither it nor the force-sync wrote.
	awaitFailures(s, f, sel, 2)
	expectKeptConfigMap(s, f, good)
	s.Expect(kmsRequestsSince(f, start)).To(ContainElement(Or(HaveField("Fault", Not(BeEmpty())), HaveField("Status", Not(Equal(http.StatusOK))))),
		"the fault never fired")
	calls := expectBackedOff(s, f, start, before.Total, row.calls, suiteRefresh)
	s.Expect(calls).To(BeNumerically(">=", 2))

	if row.clear != nil {
		row.clear(s, f)
	} else {
		f.KMS.ClearFaults()
	}
	s.Eventually(f.ReadyReason(sel), controllers.RecoveryTimeout(time.Since(start), testBackoff, suiteRefresh, row.attempt)).
		Should(Equal(kmsv1alpha1.ReasonSynced))
	s.Expect(f.States("matrix")(s)).To(Equal(want))
	if row.calls == 1 {
		expectSpacedByBackoff(s, kmsRequestsSince(f, start), suiteRefresh)
	}
	s.Report("recovered after", time.Since(start).Round(time.Millisecond).String())
}

var _ = Describe("Fault matrix", func() {
	// Each row has a fixture and a selector of its own, so the rows can wait for their backoff
	// side by side.
	describeConcurrently("KMS faults: the ConfigMap keeps the last good data, calls are bounded, the selector recovers", matrixCase,
		concurrently("429 without Retry-After", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultThrottle}),
			reason: kmsv1alpha1.ReasonKMSThrottled, message: []string{"http 429", "APIGW.0308"}, calls: 2, attempt: time.Second,
		}),
		concurrently("429 with Retry-After: 1", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultThrottle, RetryAfter: 1}),
			reason: kmsv1alpha1.ReasonKMSThrottled, message: []string{"http 429", "giving up after 2 attempts"}, calls: 2, attempt: 2 * time.Second,
		}),
		concurrently("500 with an HTML body", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultServerError, Status: http.StatusInternalServerError}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"http 500", "Internal Server Error"}, calls: 2, attempt: time.Second,
		}),
		concurrently("502 with an HTML body", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultServerError, Status: http.StatusBadGateway}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"http 502", "Bad Gateway"}, calls: 2, attempt: time.Second,
		}),
		concurrently("503 with an HTML body", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultServerError, Status: http.StatusServiceUnavailable}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"http 503", "Service Unavailable"}, calls: 2, attempt: time.Second,
		}),
		concurrently("a dropped connection", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultDrop}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"request failed", "EOF"}, calls: 2, attempt: time.Second,
		}),
		concurrently("latency beyond the 2s request timeout", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultLatency, Delay: 3 * time.Second}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"timed out after 2s"}, calls: 2, attempt: 4500 * time.Millisecond,
		}),
		concurrently("malformed JSON", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultMalformedJSON}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"decode response"}, calls: 2, attempt: time.Second,
		}),
		concurrently("truncated JSON", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultTruncatedJSON}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"decode response"}, calls: 2, attempt: time.Second,
		}),
		// Each pass reads page 1 (fine) and page 2 (drifted), and the client makes 4 passes.
		concurrently("total_count growing between pages", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultTotalDrift, Delta: 1}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"listing inconsistent", "total_count changed from 25 to 26"}, calls: 8, attempt: time.Second,
		}),
		concurrently("total_count shrinking between pages", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultTotalDrift, Delta: -1}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"listing inconsistent", "total_count changed from 25 to 24"}, calls: 8, attempt: time.Second,
		}),
		// Page 2 starts one key early, so key 10 appears twice and key 20 would be lost: the client
		// counts 24 distinct keys for total_count 25, lists again (3 more calls) and gets all 25.
		concurrently("the same key on two pages, once (a key would be lost)", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultDuplicate, Times: 1}),
			reason: kmsv1alpha1.ReasonSynced, calls: 6,
		}),
		// Pages 2 and 3 both start one key early: keys 10 and 20 appear twice, none is lost.
		concurrently("the same key on two pages, every time (nothing lost)", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultDuplicate}),
			reason: kmsv1alpha1.ReasonSynced, calls: 3,
		}),
		concurrently("an empty page while total_count is not zero", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultEmptyPage}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"listing inconsistent", "empty page at offset 0 of total_count 25"}, calls: 4, attempt: time.Second,
		}),
		concurrently("403 KMS.0303, the token expired", matrixRow{
			inject: func(_ Gomega, f *testkit.Fixture) { f.KMS.ExpireToken(f.Token) },
			clear:  func(_ Gomega, f *testkit.Fixture) { f.KMS.AddToken(f.Token) },
			reason: kmsv1alpha1.ReasonCredentialsInvalid, message: []string{"KMS.0303", "http 403"}, calls: 1, attempt: time.Second,
		}),
		concurrently("400 KMS.0202", matrixRow{
			inject: matrixFault(kmstest.Fault{Kind: kmstest.FaultKMSError, Code: "KMS.0202"}),
			reason: kmsv1alpha1.ReasonKMSRequestFailed, message: []string{"KMS.0202", "http 400"}, calls: 1, attempt: time.Second,
		}),
	)

	It("does not call KMS again before a 429's Retry-After has passed", func() {
		const retryAfter = 2 * time.Second
		f := newFixture(kmstest.WithKeys(matrixKeys[:2]...))
		sel := f.Create(f.Selector("retry-after"))
		deleteSelectorAtCleanup(sel)
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		settle(Default, f, sel)

		start := time.Now()
		Expect(f.KMS.InjectFault(kmstest.Fault{Kind: kmstest.FaultThrottle, RetryAfter: int(retryAfter / time.Second)})).To(Succeed())
		f.ForceSync(sel)
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonKMSThrottled))
		// The client waits Retry-After between its own attempts; the next listing must too.
		Eventually(func() int { return len(kmsRequestsSince(f, start)) }, 3*retryAfter).Should(BeNumerically(">=", 3))
		records := kmsRequestsSince(f, start)
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
		broken.PutCredentials(map[string]string{"token": "not-" + broken.Token})

		start := time.Now()
		healthySel := healthy.Create(healthy.Selector("healthy", withInterval))
		deleteSelectorAtCleanup(healthySel)
		brokenSel := broken.Create(broken.Selector("broken", withInterval))
		deleteSelectorAtCleanup(brokenSel)
		early := controllers.EarlyBackoffSteps(testBackoff, interval)
		Eventually(healthy.ReadyReason(healthySel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		// The first attempt and two backoff retries have failed.
		awaitFailures(Default, broken, brokenSel, 3)
		h, b := healthy.KMS.Stats().Total, broken.KMS.Stats().Total
		Expect(b).To(BeNumerically("<=", h+int64(early)), "broken %d, healthy %d, early steps %d", b, h, early)
		Expect(b).To(BeNumerically(">", h), "the broken selector was never retried")
		// At no time did the broken selector list more often than the backoff allows: its n-th call
		// came no earlier than its n-th listing may start.
		for i, r := range broken.KMS.Requests() {
			window := r.Time.Sub(start)
			Expect(i+1).To(BeNumerically("<=", controllers.MaxSyncAttempts(window, testBackoff, interval)), "call %d came %v after the start", i+1, window)
		}
		Expect(broken.KMS.Stats().ByStatus[http.StatusForbidden]).To(Equal(b))
		AddReportEntry("403 vs healthy", fmt.Sprintf("after %v: broken %d calls, healthy %d, early backoff steps %d", time.Since(start).Round(time.Millisecond), b, h, early))
	})
})

var _ = Describe("Kubernetes-side faults", func() {
	// synced returns a fixture and a selector that has synced keys.
	synced := func(name string, keys []kms.Key, mutate ...func(*kmsv1alpha1.KmsKeySelector)) (*testkit.Fixture, *kmsv1alpha1.KmsKeySelector) {
		GinkgoHelper()
		f := newFixture(kmstest.WithKeys(keys...))
		sel := f.Create(f.Selector(name, mutate...))
		deleteSelectorAtCleanup(sel)
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		settle(Default, f, sel)
		return f, sel
	}

	It("reports a deleted Secret without calling KMS, and recovers when it is back", func() {
		f, sel := synced("secret-gone", matrixKeys[:3])
		good := f.ConfigMap("secret-gone")(Default)
		Expect(k8sClient.Delete(ctx(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: testkit.CredentialsSecretName, Namespace: f.Namespace}})).To(Succeed())
		Expect(f.KMS.DeleteKey(matrixKeys[0].ID)).To(BeTrue())
		before, start := f.KMS.Stats().Total, time.Now()
		f.ForceSync(sel)

		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsNotFound))
		Expect(f.ReadyCondition(sel)(Default).Message).To(And(ContainSubstring(`secret "kms-credentials"`), ContainSubstring(f.Namespace)))
		Eventually(f.Warnings(sel)).Should(ContainElement(warningWith(kmsv1alpha1.ReasonCredentialsNotFound, `secret "kms-credentials"`)))
		// A backoff retry has failed too, without calling KMS either.
		awaitFailures(Default, f, sel, 2)
		Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonCredentialsNotFound))
		expectKeptConfigMap(Default, f, good)
		Expect(f.KMS.Stats().Total).To(Equal(before), "KMS was called without credentials")

		// Secrets are not watched: the backoff's retry finds it.
		f.PutCredentials(map[string]string{"token": f.Token})
		Eventually(f.ReadyReason(sel), controllers.RecoveryTimeout(time.Since(start), testBackoff, suiteRefresh, 0)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.States("secret-gone")(Default)).To(Equal(testkit.StatesOf(matrixKeys[1:3]...)))
	})

	It("reads a rotated Secret at the next listing, and recovers from a revoked credential once the Secret is rotated", func() {
		f, sel := synced("rotate", matrixKeys[:3])
		good := f.ConfigMap("rotate")(Default)

		By("rotating before KMS revokes the old token: no failure at all")
		f.KMS.AddToken("rotated-1")
		f.PutCredentials(map[string]string{"token": "rotated-1"})
		f.KMS.RemoveToken(f.Token)
		f.ForceSync(sel)
		Eventually(f.Handled(sel)).Should(Succeed())
		Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.KMS.Requests()).To(HaveEach(HaveField("Status", http.StatusOK)))

		By("KMS revoking the token before the Secret is rotated")
		f.KMS.RemoveToken("rotated-1")
		Expect(f.KMS.DeleteKey(matrixKeys[0].ID)).To(BeTrue())
		before, start := f.KMS.Stats().Total, time.Now()
		f.ForceSync(sel)
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsInvalid))
		Expect(f.ReadyCondition(sel)(Default).Message).To(And(ContainSubstring("KMS.0302"), Not(ContainSubstring("rotated-1"))))
		Eventually(f.Warnings(sel)).Should(ContainElement(warningWith(kmsv1alpha1.ReasonCredentialsInvalid, "KMS.0302")))
		awaitFailures(Default, f, sel, 2)
		expectKeptConfigMap(Default, f, good)
		expectBackedOff(running, f, start, before, 1, suiteRefresh)

		f.KMS.AddToken("rotated-2")
		f.PutCredentials(map[string]string{"token": "rotated-2"})
		Eventually(f.ReadyReason(sel), controllers.RecoveryTimeout(time.Since(start), testBackoff, suiteRefresh, 0)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.States("rotate")(Default)).To(Equal(testkit.StatesOf(matrixKeys[1:3]...)))
		expectSpacedByBackoff(Default, kmsRequestsSince(f, start), suiteRefresh)
	})

	It("reports a Secret that lost a key without calling KMS, and recovers when the key is back", func() {
		f := newFixture(kmstest.WithKeys(matrixKeys[:3]...), kmstest.WithAKSK("AKMATRIX0001", "matrix-secret-key", ""))
		f.PutCredentials(map[string]string{"accessKey": "AKMATRIX0001", "secretKey": "matrix-secret-key"})
		sel := f.Create(f.Selector("lost-key"))
		deleteSelectorAtCleanup(sel)
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonSynced))
		settle(Default, f, sel)
		good := f.ConfigMap("lost-key")(Default)

		f.PutCredentials(map[string]string{"accessKey": "AKMATRIX0001"})
		before, start := f.KMS.Stats().Total, time.Now()
		f.ForceSync(sel)
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonCredentialsInvalid))
		Expect(f.ReadyCondition(sel)(Default).Message).To(ContainSubstring(`"secretKey" is missing`))
		Eventually(f.Warnings(sel)).Should(ContainElement(warningWith(kmsv1alpha1.ReasonCredentialsInvalid, `"secretKey" is missing`)))
		awaitFailures(Default, f, sel, 2)
		Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonCredentialsInvalid))
		expectKeptConfigMap(Default, f, good)
		Expect(f.KMS.Stats().Total).To(Equal(before))

		f.PutCredentials(map[string]string{"accessKey": "AKMATRIX0001", "secretKey": "matrix-secret-key"})
		Eventually(f.ReadyReason(sel), controllers.RecoveryTimeout(time.Since(start), testBackoff, suiteRefresh, 0)).Should(Equal(kmsv1alpha1.ReasonSynced))
	})

	It("repairs an edited or deleted ConfigMap from the last good listing while KMS is down", func() {
		f, sel := synced("repair-outage", matrixKeys[:3])
		good := f.ConfigMap("repair-outage")(Default)
		data := func(g Gomega) map[string]string { return f.ConfigMap("repair-outage")(g).Data }

		Expect(f.KMS.InjectFault(kmstest.Fault{Kind: kmstest.FaultServerError})).To(Succeed())
		Expect(f.KMS.DeleteKey(matrixKeys[0].ID)).To(BeTrue())
		before, start := f.KMS.Stats().Total, time.Now()
		f.ForceSync(sel)
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonKMSRequestFailed))

		By("an edit")
		cm := f.ConfigMap("repair-outage")(Default)
		cm.Data[matrixKeys[1].ID] = "Tampered"
		delete(cm.Data, matrixKeys[2].ID)
		cm.Data["extra"] = "added by someone"
		Expect(k8sClient.Update(ctx(), cm)).To(Succeed())
		Eventually(data).Should(Equal(good.Data))

		By("a deletion")
		Expect(k8sClient.Delete(ctx(), cm)).To(Succeed())
		Eventually(data).Should(Equal(good.Data))
		repaired := f.ConfigMap("repair-outage")(Default)
		// A backoff retry after the repair has failed, and left the repaired ConfigMap alone.
		awaitRetry(Default, f, sel)
		expectKeptConfigMap(Default, f, repaired)
		Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonKMSRequestFailed))
		expectBackedOff(running, f, start, before, 2, suiteRefresh)

		f.KMS.ClearFaults()
		Eventually(f.ReadyReason(sel), controllers.RecoveryTimeout(time.Since(start), testBackoff, suiteRefresh, time.Second)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.States("repair-outage")(Default)).To(Equal(testkit.StatesOf(matrixKeys[1:3]...)))
	})

	It("never touches a pre-existing ConfigMap it does not own, and lists only once it is gone", func() {
		f := newFixture(kmstest.WithKeys(matrixKeys[:3]...))
		foreign := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "unowned", Namespace: f.Namespace}, Data: map[string]string{"owner": "someone else"}}
		Expect(k8sClient.Create(ctx(), foreign)).To(Succeed())
		// One labelled as the operator's, but for another selector.
		other := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "other-selectors", Namespace: f.Namespace, Labels: map[string]string{
			kmsv1alpha1.ManagedByLabel: kmsv1alpha1.ManagedByValue, kmsv1alpha1.SelectorLabel: "someone-else",
		}}, Data: map[string]string{"owner": "another selector"}}
		Expect(k8sClient.Create(ctx(), other)).To(Succeed())
		start := time.Now()
		sel := f.Create(f.Selector("unowned"))
		deleteSelectorAtCleanup(sel)
		sel2 := f.Create(f.Selector("second", func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.Target.ConfigMapName = "other-selectors" }))
		deleteSelectorAtCleanup(sel2)

		for _, s := range []*kmsv1alpha1.KmsKeySelector{sel, sel2} {
			Eventually(f.ReadyReason(s)).Should(Equal(kmsv1alpha1.ReasonTargetConflict))
			Expect(f.ReadyCondition(s)(Default).Message).To(ContainSubstring("is not managed by this selector"))
			Eventually(f.Warnings(s)).Should(ContainElement(warningWith(kmsv1alpha1.ReasonTargetConflict, "is not managed by this selector")))
			// A backoff retry has met the conflict too.
			awaitFailures(Default, f, s, 2)
			Expect(f.ReadyReason(s)(Default)).To(Equal(kmsv1alpha1.ReasonTargetConflict))
		}
		expectKeptConfigMap(Default, f, foreign)
		expectKeptConfigMap(Default, f, other)
		Expect(f.KMS.Stats().Total).To(BeZero(), "KMS was listed for a ConfigMap the selector cannot write")

		Expect(k8sClient.Delete(ctx(), foreign)).To(Succeed())
		Eventually(f.ReadyReason(sel), controllers.RecoveryTimeout(time.Since(start), testBackoff, suiteRefresh, 0)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.States("unowned")(Default)).To(Equal(testkit.StatesOf(matrixKeys[:3]...)))
	})

	// The operator writes with server-side apply and ForceOwnership, without a resourceVersion, so
	// the API server never answers it 409: field conflicts are forced, and there is no optimistic
	// lock to lose. The closest real thing is another field manager taking one of its fields.
	It("takes its fields back from another field manager, without calling KMS", func() {
		f, sel := synced("contested", matrixKeys[:3])
		good := f.ConfigMap("contested")(Default)
		calls := f.KMS.Stats().Total
		contested := matrixKeys[1].ID

		By("another manager applying without force gets the 409")
		intrusion := corev1ac.ConfigMap("contested", f.Namespace).WithData(map[string]string{contested: "Tampered", "foreign": "x"})
		err := k8sClient.Apply(ctx(), intrusion, client.FieldOwner("intruder"))
		Expect(apierrors.IsConflict(err)).To(BeTrue(), "want 409 Conflict, got %v", err)
		Expect(err.Error()).To(ContainSubstring(`conflict with "kms-key-sync"`))

		By("forcing, it takes the field; the operator takes it back")
		Expect(k8sClient.Apply(ctx(), intrusion, client.FieldOwner("intruder"), client.ForceOwnership)).To(Succeed())
		Eventually(func(g Gomega) {
			cm := f.ConfigMap("contested")(g)
			g.Expect(cm.Data).To(Equal(good.Data))
			for _, mf := range cm.ManagedFields {
				if mf.Manager == "intruder" && mf.FieldsV1 != nil {
					g.Expect(mf.FieldsV1.GetRawString()).NotTo(ContainSubstring(contested), "the intruder still owns the entry")
				}
			}
		}).Should(Succeed())
		Expect(f.ReadyReason(sel)(Default)).To(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.KMS.Stats().Total).To(Equal(calls))
	})

	It("writes nothing for a selector deleted while its listing is in flight, and keeps serving the others", func() {
		f := newFixture(kmstest.WithKeys(matrixKeys[:3]...))
		Expect(f.KMS.InjectFault(kmstest.Fault{Kind: kmstest.FaultLatency, Delay: 1500 * time.Millisecond, Times: 2})).To(Succeed())
		// Different page sizes, so that the two listings are not coalesced into one.
		doomed := f.Create(f.Selector("doomed-delete", func(s *kmsv1alpha1.KmsKeySelector) { s.Spec.PageSize = ptr.To[int32](100) }))
		retained := f.Create(f.Selector("doomed-retain", func(s *kmsv1alpha1.KmsKeySelector) {
			s.Spec.PageSize = ptr.To[int32](200)
			s.Spec.Target.DeletionPolicy = kmsv1alpha1.DeletionPolicyRetain
		}))
		Eventually(func() int64 { return f.KMS.Stats().FaultsApplied }).Should(Equal(int64(2)), "both listings in flight")
		Expect(k8sClient.Delete(ctx(), doomed)).To(Succeed())
		Expect(k8sClient.Delete(ctx(), retained)).To(Succeed())
		Eventually(func() int64 { return f.KMS.Stats().ByStatus[http.StatusOK] }, 5*time.Second).Should(Equal(int64(2)), "both listings answered")
		expectNotWritten := func() {
			GinkgoHelper()
			for _, name := range []string{"doomed-delete", "doomed-retain"} {
				err := k8sClient.Get(ctx(), types.NamespacedName{Namespace: f.Namespace, Name: name}, &corev1.ConfigMap{})
				Expect(err).To(Satisfy(apierrors.IsNotFound), "ConfigMap %q was written after its selector was deleted", name)
			}
		}
		// The reconciles that were waiting for the listings have ended.
		awaitIdleWorkers()
		expectNotWritten()

		survivor := f.Create(f.Selector("survivor"))
		deleteSelectorAtCleanup(survivor)
		Eventually(f.ReadyReason(survivor)).Should(Equal(kmsv1alpha1.ReasonSynced))
		Expect(f.States("survivor")(Default)).To(Equal(testkit.StatesOf(matrixKeys[:3]...)))
		expectNotWritten()
	})

	It("lists again at once when the spec of a synced selector changes", func() {
		f, sel := synced("respec", []kms.Key{keyA, keyB, keyC}, testkit.WithTags(testkit.Tag("env", "prod")))
		Expect(f.States("respec")(Default)).To(Equal(testkit.StatesOf(keyA, keyB)))
		Eventually(func(g Gomega) {
			cur := f.Get(sel)(g)
			cur.Spec.Tags = []kmsv1alpha1.TagSelector{testkit.Tag("env", "staging")}
			g.Expect(k8sClient.Update(ctx(), cur)).To(Succeed())
		}).Should(Succeed())
		// The refresh interval is 5 minutes: only a listing prompted by the change gets there.
		Eventually(f.States("respec"), 5*time.Second).Should(Equal(testkit.StatesOf(keyC)),
			"the ConfigMap still holds the keys of the old spec while the status says generation %d was observed", f.Get(sel)(Default).Status.ObservedGeneration)
		// The status is written after the ConfigMap, with the attempt's outcome.
		Eventually(func(g Gomega) {
			cur := f.Get(sel)(g)
			g.Expect(cur.Status.ObservedGeneration).To(Equal(cur.Generation))
			g.Expect(cur.Status.KeyCount).To(Equal(ptr.To[int32](1)))
		}).Should(Succeed())
	})
})
