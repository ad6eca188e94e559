package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http/httptest"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/iamtest"
)

const (
	// keylessServiceAccount is the service account every selector of a keyless scenario acts as,
	// one in each namespace.
	keylessServiceAccount = "kms-reader"
	// credentialLifetime is how long the temporary credentials IAM issues last: short, so that
	// the soak sees several of them expire.
	credentialLifetime = 2 * time.Minute
	// soakSampleInterval is how often the soak counts the selectors that are not Synced.
	soakSampleInterval = time.Second
)

// iamServer is the IAM emulator over TLS, with the certificate of the KMS emulator, so that the
// operator's --kms-ca-file trusts both. Its identity provider trusts the cluster's service
// account issuer; the KMS emulator accepts the temporary credentials it issues.
type iamServer struct {
	*iamtest.IAM
	srv *httptest.Server
}

func startIAM(ctx context.Context, cl *cluster, sc scenario, emu *emulator) (*iamServer, error) {
	iam, srv, err := testkit.StartIAM(ctx, cl.env.Config)
	if err != nil {
		return nil, fmt.Errorf("starting the IAM emulator: %w", err)
	}
	iam.Trust(emu.Emulator)
	iam.SetCredentialLifetime(credentialLifetime)
	for _, ns := range sc.namespaceNames() {
		iam.Allow(testkit.IdentityProviderID, testkit.ServiceAccountSubject(ns, keylessServiceAccount), emu.ProjectID())
	}
	progress("IAM emulator at %s: identity provider %s, credentials for %s", srv.URL, testkit.IdentityProviderID, credentialLifetime)
	return &iamServer{IAM: iam, srv: srv}, nil
}

func (s *iamServer) close() error {
	s.srv.Close()
	return nil
}

// operatorArgs are the operator's flags that concern IAM: its host is allowed to receive the
// selectors' service account tokens, and --kms-ca-file trusts its certificate already.
func (s *iamServer) operatorArgs() []string {
	return []string{"--allowed-iam-hosts=" + s.srv.Listener.Addr().String()}
}

// selectorAuth points a selector's provider at IAM, acting as keylessServiceAccount.
func (s *iamServer) selectorAuth() func(*kmsv1alpha1.KmsKeySelector) {
	return testkit.WithWorkloadIdentity(keylessServiceAccount, s.srv.URL)
}

// serviceAccount is keylessServiceAccount in namespace ns, opted in to workload identity for the
// selectors' audience.
func serviceAccount(ns string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Namespace:   ns,
		Name:        keylessServiceAccount,
		Annotations: map[string]string{kmsv1alpha1.WorkloadIdentityAudiencesAnnotation: testkit.TokenAudience},
	}}
}

// soakResult is what the soak counted over its window, which begins once every selector is
// Synced. IAM's and KMS's "in all" counts start when the selectors are applied.
type soakResult struct {
	duration                  time.Duration
	refreshes, fewest         int // refreshes seen in the window: all, and the fewest of one selector
	exchanges, exchangesInAll int64
	securityTokens            int64 // securitytokens calls in all
	refusals                  int64 // IAM's error answers in all
	kmsRequests               int64 // in the window
	kms403                    int64 // in all
	samples, notSynced        int   // samples taken, and those in which a selector was not Synced
	worstSample               int   // the most selectors not Synced in one sample
}

// soak watches the Synced selectors for o.soakDuration of wall clock: every second it counts those
// whose Ready condition is not Synced, and at the end it reads what IAM and KMS answered.
func soak(ctx context.Context, o options, emu *emulator, iam *iamServer, tr *tracker) (*soakResult, error) {
	if err := tr.waitSynced(ctx, stepTimeout); err != nil {
		return nil, err
	}
	r := &soakResult{duration: o.soakDuration}
	iamBefore, kmsBefore := iam.Stats(), emu.Stats()
	start := time.Now()
	progress("all selectors Synced; watching them for %s (%d id-token exchanges so far)", o.soakDuration, iamBefore.IDTokenExchanges)
	ticker := time.NewTicker(soakSampleInterval)
	defer ticker.Stop()
	lastReport := start
	for now := start; now.Sub(start) < o.soakDuration; {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("soaking: %w", context.Cause(ctx))
		case now = <-ticker.C:
		}
		n := tr.notSynced()
		r.samples++
		if n > 0 {
			r.notSynced++
			r.worstSample = max(r.worstSample, n)
		}
		if now.Sub(lastReport) >= time.Minute {
			lastReport = now
			progress("soak: %s of %s, %d id-token exchanges, %d samples with a selector not Synced",
				now.Sub(start).Round(time.Second), o.soakDuration, iam.Stats().IDTokenExchanges-iamBefore.IDTokenExchanges, r.notSynced)
		}
	}
	end := time.Now()
	iamAfter, kmsAfter := iam.Stats(), emu.Stats()
	r.refreshes, r.fewest = tr.refreshesBetween(start, end)
	r.exchanges = iamAfter.IDTokenExchanges - iamBefore.IDTokenExchanges
	r.exchangesInAll = iamAfter.IDTokenExchanges
	r.securityTokens = iamAfter.SecurityTokens
	r.refusals = iamAfter.Refusals
	r.kmsRequests = kmsAfter.Total - kmsBefore.Total
	r.kms403 = kmsAfter.ByStatus[403]
	progress("soak done: %d refreshes, %d id-token exchanges, %d refusals, %d KMS 403s, %d of %d samples with a selector not Synced",
		r.refreshes, r.exchanges, r.refusals, r.kms403, r.notSynced, r.samples)
	return r, nil
}

// exchangeRange is how many id-token exchanges a window of d should take: the operator replaces
// credentials a quarter of their lifetime before they expire, so once every 3/4 lifetime (90 s
// for 2-minute credentials), give or take one for where the window falls. Six minutes: 3 to 5.
func exchangeRange(d time.Duration) (lo, hi int64) {
	n := d.Seconds() / (credentialLifetime.Seconds() * 3 / 4)
	return max(int64(math.Floor(n))-1, 0), int64(math.Ceil(n)) + 1
}

func (r *soakResult) targets(add func(goal, measured string, met bool)) {
	lo, hi := exchangeRange(r.duration)
	add(fmt.Sprintf("%d–%d id-token exchanges in %s", lo, hi, r.duration), num(int(r.exchanges)), r.exchanges >= lo && r.exchanges <= hi)
	add("0 samples with a selector not Synced", fmt.Sprintf("%s of %s", num(r.notSynced), num(r.samples)), r.notSynced == 0)
	add("0 KMS 403s", num(int(r.kms403)), r.kms403 == 0)
	add("0 IAM refusals", num(int(r.refusals)), r.refusals == 0)
}

// writeSoaks prints the keyless scenarios' counts; they measure no refresh cycle, so they are
// not in the results table.
func writeSoaks(w io.Writer, results []*result) {
	keyless := func(r *result) bool { return r.scenario.keyless }
	if !slices.ContainsFunc(results, keyless) {
		return
	}
	fmt.Fprintln(w, "### Keyless soak")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Counted once every selector is Synced, over the soak's wall-clock window; \"in all\" counts from the apply on.")
	fmt.Fprintln(w)
	writeScenarioTable(w, results, keyless,
		[]string{"Apply → all Ready", "Window", "Refreshes (fewest of one selector)", "Id-token exchanges: window / in all", "Securitytokens calls", "KMS requests in the window", "Samples not Synced", "KMS 403s", "IAM refusals"},
		func(r *result) []string {
			s := r.soak
			return []string{seconds(r.readyAfter), s.duration.String(), fmt.Sprintf("%s (%s)", num(s.refreshes), num(s.fewest)),
				fmt.Sprintf("%s / %s", num(int(s.exchanges)), num(int(s.exchangesInAll))), num(int(s.securityTokens)), num(int(s.kmsRequests)),
				fmt.Sprintf("%s of %s", num(s.notSynced), num(s.samples)), num(int(s.kms403)), num(int(s.refusals))}
		})
}
