package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"go.uber.org/zap/zapcore"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/keysource"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/iamtest"
)

// Canary credentials: distinctive strings that cannot appear anywhere by chance.
const (
	canaryToken   = "CanaryTok-7Qx2Vb9Lm4Zr8Wd1"
	canaryAK      = "CANARYAK5TG7YH2UJ9"
	canarySK      = "CanarySK-3Np6Rt1Ye8Ku5Io0"
	canarySTS     = "CanarySTS-9Ha4Jd7Fk2Lq6Mw3"
	canaryWrongSK = "CanaryWrongSK-1Zx8Cv5Bn2Mq7"
	// canaryPodToken is the operator's pod identity token, as CCE would write it to a file.
	canaryPodToken = "CanaryPodTok-4Gs8Hn3Vc6Xe1Pl"
)

// echo is an error message in which a server repeats credentials back.
func echo(secrets ...string) string { return "credentials echoed: " + strings.Join(secrets, " ") }

var canaries = map[string]string{
	"token": canaryToken, "access key": canaryAK, "secret key": canarySK,
	"security token": canarySTS, "wrong secret key": canaryWrongSK, "pod identity token": canaryPodToken,
}

// encodings lists the forms a leaked value would take: as is, and base64 (Secret data as the
// API serves it) or hex encoded.
func encodings(v string) map[string]string {
	return map[string]string{
		"raw":    v,
		"base64": base64.StdEncoding.EncodeToString([]byte(v)),
		"hex":    hex.EncodeToString([]byte(v)),
	}
}

// leaks lists every canary, and every other secret given, in any encoding, that appears in a
// haystack. Hex dumps (client-go logs response bodies that way at V(8)) are decoded first, since
// they split values over lines.
func leaks(haystacks map[string]string, others ...string) []string {
	secrets := maps.Clone(canaries)
	for i, v := range others {
		secrets[fmt.Sprintf("keyless secret %d", i)] = v
	}
	var out []string
	for where, text := range haystacks {
		text += "\n" + undumpAll(text)
		for what, v := range secrets {
			for enc, needle := range encodings(v) {
				if i := strings.Index(text, needle); i >= 0 {
					out = append(out, fmt.Sprintf("the %s (%s) appears in the %s: ...%s...", what, enc, where,
						text[max(0, i-120):min(len(text), i+len(needle)+40)]))
				}
			}
		}
	}
	return out
}

// hexDumpLine is a line of encoding/hex.Dump output: offset, up to 16 bytes, and their text.
var hexDumpLine = regexp.MustCompile(`(?m)^[0-9a-f]{8}  ((?:[0-9a-f]{2} {1,2}){1,16})`)

// undumpAll decodes the hex dumps found in text, including those inside JSON strings of a JSON
// log line, and returns the bytes they hold, one dump per line.
func undumpAll(text string) string {
	var strs []string
	for _, line := range strings.Split(text, "\n") {
		var fields map[string]any
		if json.Unmarshal([]byte(line), &fields) == nil {
			for _, v := range fields {
				if s, ok := v.(string); ok {
					strs = append(strs, s)
				}
			}
		}
	}
	strs = append(strs, text)
	var out []string
	for _, s := range strs {
		var b []byte
		for _, m := range hexDumpLine.FindAllStringSubmatch(s, -1) {
			for _, h := range strings.Fields(m[1]) {
				if v, err := hex.DecodeString(h); err == nil {
					b = append(b, v...)
				}
			}
		}
		if len(b) > 0 {
			out = append(out, string(b))
		}
	}
	return strings.Join(out, "\n")
}

var _ = Describe("Secrets", func() {
	It("never writes a credential to the log at verbosity 10, events, status, metrics or errors", func() {
		keys := kmstest.GenerateKeys(3, map[string]string{"canary": "yes"})
		// Two emulators: one takes the token, one the AK/SK pair, so that each can echo back what
		// its callers sent (a token; a security token) without echoing another caller's secrets.
		f := newFixture(kmstest.WithKeys(keys...), kmstest.WithToken(canaryToken))
		aksk := testkit.NewEmulator("", kmstest.WithKeys(keys...), kmstest.WithAKSK(canaryAK, canarySK, canarySTS))
		DeferCleanup(aksk.Close)
		f.PutSecret("by-token", map[string]string{"token": canaryToken + "\n"})
		f.PutSecret("by-aksk", map[string]string{"accessKey": canaryAK, "secretKey": canarySK, "securityToken": canarySTS})
		f.PutSecret("wrong-sk", map[string]string{"accessKey": canaryAK, "secretKey": canaryWrongSK, "securityToken": canarySTS})
		f.PutSecret("both", map[string]string{"token": canaryToken, "accessKey": canaryAK, "secretKey": canarySK})

		// The operator runs in this process with loggers of its own at V(10). Whatever else the
		// process logs meanwhile (controller-runtime's global logger, klog) goes to processLog,
		// also at V(10): together, all that an operator process would write to its log.
		processLogLevel.SetLevel(zapcore.Level(-10))
		DeferCleanup(func() { processLogLevel.SetLevel(zapcore.DebugLevel) })
		processFrom := processLog.Len()
		logf.Log.V(10).Info("Leak test started: controller-runtime's logger at V(10)")
		klog.InfoS("Leak test started: klog")
		operatorLog := &testkit.Buffer{}
		logger := testkit.JSONLogger(operatorLog, 10)
		metricsAddr, err := testkit.FreeLoopbackAddress()
		Expect(err).NotTo(HaveOccurred())
		o, err := operatorOptions(metricsAddr, f.Namespace)
		Expect(err).NotTo(HaveOccurred())
		o.Logger, o.KMS.Logger = logger, logger.WithName("kms")
		// Keyless credentials: one IAM emulator serves the workload identity exchange, the node's
		// metadata service and the operator's pod identity; its credentials last seconds, so the
		// spec sees them replaced and refused.
		iam, iamTLS, err := testkit.StartIAM(bg(), env.Config, f.KMS)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(iamTLS.Close)
		metadata := httptest.NewServer(iam.Handler())
		DeferCleanup(metadata.Close)
		iam.SetCredentialLifetime(3 * time.Second)
		podToken := filepath.Join(GinkgoT().TempDir(), "token")
		Expect(os.WriteFile(podToken, []byte(canaryPodToken), 0o600)).To(Succeed())
		o.MetadataEndpoint = metadata.URL
		o.PodIdentityURI, o.PodIdentityTokenFile = iamTLS.URL+iamtest.PathPodIdentity, podToken
		op := runOperator(o)

		using := func(secret string, endpoint string) func(*kmsv1alpha1.KmsKeySelector) {
			return func(s *kmsv1alpha1.KmsKeySelector) {
				s.Spec.Provider.CredentialsSecretRef = &kmsv1alpha1.SecretReference{Name: secret}
				s.Spec.Provider.Endpoint = endpoint
			}
		}
		byToken := f.Create(f.Selector("by-token", using("by-token", f.KMS.URL)))
		byAKSK := f.Create(f.Selector("by-aksk", using("by-aksk", aksk.URL)))
		wrongSK := f.Create(f.Selector("wrong-sk", using("wrong-sk", aksk.URL)))
		both := f.Create(f.Selector("both", using("both", f.KMS.URL)))
		for _, s := range []*kmsv1alpha1.KmsKeySelector{byToken, byAKSK} {
			Eventually(f.ReadyReason(s)).Should(Equal(kmsv1alpha1.ReasonSynced))
		}
		Eventually(f.ReadyReason(wrongSK)).Should(Equal(kmsv1alpha1.ReasonCredentialsInvalid))
		Expect(readyMessage(f, wrongSK)).To(ContainSubstring("KMS.0302"))
		Eventually(f.ReadyReason(both)).Should(Equal(kmsv1alpha1.ReasonCredentialsInvalid))
		// The canaries were really used: KMS saw the access key sign, and the token.
		Expect(aksk.Requests()).To(ContainElement(And(HaveField("AccessKey", canaryAK), HaveField("Status", http.StatusOK))))
		Expect(f.KMS.Requests()).To(ContainElement(And(HaveField("Auth", kmstest.AuthToken), HaveField("Status", http.StatusOK))))

		type target struct {
			sel    *kmsv1alpha1.KmsKeySelector
			kms    *kmstest.Server
			echoed string
		}
		targets := []target{{byToken, f.KMS, "token=" + canaryToken}, {byAKSK, aksk, "securityToken=" + canarySTS}}
		for _, step := range []struct {
			name   string
			fault  kmstest.Fault
			reason string
		}{
			{"403 echoing the credentials", kmstest.Fault{Kind: kmstest.FaultKMSError, Code: "KMS.0303"}, kmsv1alpha1.ReasonCredentialsInvalid},
			{"500 echoing the credentials (retried)", kmstest.Fault{Kind: kmstest.FaultKMSError, Code: "KMS.0101"}, kmsv1alpha1.ReasonKMSRequestFailed},
			{"503 with an HTML body", kmstest.Fault{Kind: kmstest.FaultServerError}, kmsv1alpha1.ReasonKMSRequestFailed},
			{"malformed JSON", kmstest.Fault{Kind: kmstest.FaultMalformedJSON}, kmsv1alpha1.ReasonKMSRequestFailed},
		} {
			By(step.name)
			for _, t := range targets {
				fl := step.fault
				if fl.Kind == kmstest.FaultKMSError {
					fl.Message = echo(t.echoed)
				}
				Expect(t.kms.InjectFault(fl)).To(Succeed())
				f.ForceSync(t.sel)
				Eventually(f.Handled(t.sel)).Should(Succeed())
				Expect(f.ReadyReason(t.sel)(Default)).To(Equal(step.reason))
				if fl.Message != "" {
					// The echo reached the client and was scrubbed, not dropped.
					Expect(readyMessage(f, t.sel)).To(ContainSubstring(echo(strings.SplitN(t.echoed, "=", 2)[0] + "=[redacted]")))
				}
				// Healthy again before the next step, whose first attempt then retries as a
				// healthy selector's does.
				t.kms.ClearFaults()
				f.ForceSync(t.sel)
				Eventually(synced(f, t.sel)).Should(Succeed())
			}
		}

		By("keyless credentials: obtained, replaced, and refused")
		f.ServiceAccount("leak", testkit.TokenAudience)
		sub := testkit.ServiceAccountSubject(f.Namespace, "leak")
		iam.Allow(testkit.IdentityProviderID, sub, f.KMS.ProjectID())
		iam.SetNodeAgency(f.KMS.ProjectID())
		iam.SetPodIdentity(canaryPodToken, f.KMS.ProjectID())
		keyless := []*kmsv1alpha1.KmsKeySelector{f.Create(f.Selector("workload", testkit.WithWorkloadIdentity("leak", iamTLS.URL)))}
		for _, auth := range []kmsv1alpha1.ClusterKmsProviderAuth{{NodeAgency: &kmsv1alpha1.NodeAgency{}}, {PodIdentity: &kmsv1alpha1.PodIdentity{}}} {
			p := &kmsv1alpha1.ClusterKmsProvider{
				ObjectMeta: metav1.ObjectMeta{GenerateName: "leak-"},
				Spec: kmsv1alpha1.ClusterKmsProviderSpec{
					KMSLocation: kmsv1alpha1.KMSLocation{ProjectID: f.KMS.ProjectID(), Endpoint: f.KMS.URL},
					Auth:        auth,
				},
			}
			Expect(k8sClient.Create(bg(), p)).To(Succeed())
			DeferCleanup(func() { _ = k8sClient.Delete(bg(), p) })
			keyless = append(keyless, f.Create(f.Selector(p.Name, func(s *kmsv1alpha1.KmsKeySelector) {
				s.Spec.Provider = nil
				s.Spec.ProviderRef = &kmsv1alpha1.ProviderReference{Kind: kmsv1alpha1.KindClusterKmsProvider, Name: p.Name}
			})))
		}
		for _, s := range keyless {
			Eventually(f.ReadyReason(s)).Should(Equal(kmsv1alpha1.ReasonSynced))
		}
		issued := iam.Stats()
		Eventually(func(g Gomega) {
			for _, s := range keyless {
				f.ForceSync(s)
			}
			st := iam.Stats()
			g.Expect(st.IDTokenExchanges).To(BeNumerically(">", issued.IDTokenExchanges))
			g.Expect(st.MetadataCredentials).To(BeNumerically(">", issued.MetadataCredentials))
			g.Expect(st.PodIdentityCredentials).To(BeNumerically(">", issued.PodIdentityCredentials))
		}, 30*time.Second, time.Second).Should(Succeed(), "the credentials were replaced as they expired")
		iam.Revoke(testkit.IdentityProviderID, sub)
		iam.SetNodeAgency()
		iam.SetPodIdentity("another-"+canaryPodToken, f.KMS.ProjectID())
		for _, s := range keyless {
			Eventually(func(g Gomega) string {
				f.ForceSync(s)
				return f.ReadyReason(s)(g)
			}, 30*time.Second, time.Second).Should(Equal(kmsv1alpha1.ReasonIdentityExchangeFailed))
		}

		By("stopping the operator")
		metricsText, err := testkit.MetricsText(bg(), nil, "http://"+metricsAddr+"/metrics")
		Expect(err).NotTo(HaveOccurred())
		Expect(op.Stop()).To(Succeed())
		logText, processText := operatorLog.String(), processLog.From(processFrom)

		events := &eventsv1.EventList{}
		Expect(k8sClient.List(bg(), events, client.InNamespace(f.Namespace))).To(Succeed())
		eventsJSON, err := json.Marshal(events)
		Expect(err).NotTo(HaveOccurred())
		selectors := &kmsv1alpha1.KmsKeySelectorList{}
		Expect(k8sClient.List(bg(), selectors, client.InNamespace(f.Namespace))).To(Succeed())
		selectorsJSON, err := json.Marshal(selectors)
		Expect(err).NotTo(HaveOccurred())

		// Positive controls: each haystack holds what it should, so an empty one cannot pass.
		Expect(logText).To(ContainSubstring(`"msg":"kms request"`))
		Expect(logText).To(ContainSubstring(`X-Auth-Token: [redacted]`))
		Expect(logText).To(ContainSubstring(`Authorization: [redacted]`))
		Expect(logText).To(ContainSubstring(`X-Security-Token: [redacted]`))
		Expect(logText).To(ContainSubstring(`"msg":"Sync failed"`))
		Expect(logText).To(ContainSubstring(`kms request failed, retrying`))
		Expect(strings.Count(logText, "\n")).To(BeNumerically(">", 100))
		Expect(processText).To(And(ContainSubstring("Leak test started: controller-runtime's logger"), ContainSubstring("Leak test started: klog")))
		Expect(string(eventsJSON)).To(And(ContainSubstring("CredentialsInvalid"), ContainSubstring("KMSRequestFailed"), ContainSubstring("[redacted]"),
			ContainSubstring("IdentityExchangeFailed"), ContainSubstring("the node has no IAM agency")))
		Expect(len(iam.Secrets())).To(BeNumerically(">=", 10), "the IAM emulator saw tokens and issued keys")
		Expect(string(selectorsJSON)).To(ContainSubstring(`"reason":"Synced"`))
		Expect(string(metricsText)).To(And(ContainSubstring("kms_key_sync_kms_requests_total"), ContainSubstring(`namespace="`+f.Namespace+`"`)))

		Expect(leaks(map[string]string{
			"operator log": logText,
			"process log":  processText,
			"events":       string(eventsJSON),
			"selectors":    string(selectorsJSON),
			"metrics":      string(metricsText),
			"errors":       clientErrors(f.KMS, aksk),
		}, iam.Secrets()...)).To(BeEmpty())
	})

	// A zap logger renders a struct without a String or MarshalLog method by reflection, as JSON.
	It("keeps credentials out of structured log fields, alone or inside a request", func() {
		var buf bytes.Buffer
		logger := testkit.JSONLogger(&buf, 10)
		creds := kms.Credentials{AccessKey: canaryAK, SecretKey: canarySK, SecurityToken: canarySTS}
		logger.V(10).Info("credentials", "credentials", creds)
		logger.V(10).Info("request", "request", keysource.Request{Endpoint: "https://kms.example", ProjectID: "p", Credentials: creds})
		logger.V(10).Info("token", "credentials", kms.Credentials{Token: canaryToken})
		Expect(buf.String()).To(ContainSubstring(`"msg":"request"`))
		Expect(leaks(map[string]string{"structured log": buf.String()})).To(BeEmpty())
	})
})

// clientErrors lists, in every formatting, the errors and descriptions the KMS client produces
// with canary credentials against failing answers, including answers that echo what was sent.
func clientErrors(byToken, byAKSK *kmstest.Server) string {
	GinkgoHelper()
	var out []string
	for _, c := range []struct {
		kms    *kmstest.Server
		creds  kms.Credentials
		echoed []string
	}{
		{byToken, kms.Credentials{Token: canaryToken}, []string{canaryToken}},
		{byAKSK, kms.Credentials{AccessKey: canaryAK, SecretKey: canarySK, SecurityToken: canarySTS}, []string{canarySK, canarySTS}},
		{byAKSK, kms.Credentials{AccessKey: canaryAK, SecretKey: canaryWrongSK, SecurityToken: canarySTS}, []string{canaryWrongSK, canarySTS}},
	} {
		for _, fl := range []kmstest.Fault{
			{Kind: kmstest.FaultKMSError, Code: "KMS.0303", Message: echo(c.echoed...)},
			{Kind: kmstest.FaultKMSError, Code: "KMS.0101", Message: echo(c.echoed...)},
			{Kind: kmstest.FaultServerError},
			{Kind: kmstest.FaultMalformedJSON},
			{Kind: kmstest.FaultTruncatedJSON},
			{Kind: kmstest.FaultDrop},
		} {
			c.kms.ClearFaults()
			Expect(c.kms.InjectFault(fl)).To(Succeed())
			transport, err := testkit.EmulatorTransport()
			Expect(err).NotTo(HaveOccurred())
			client, err := kms.New(kms.Config{Endpoint: c.kms.URL, ProjectID: kmstest.DefaultProjectID, Credentials: c.creds, Transport: transport,
				Retry: kms.RetryPolicy{MaxAttempts: 2, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}})
			Expect(err).NotTo(HaveOccurred())
			_, err = client.ListKeys(bg(), kms.Filter{})
			Expect(err).To(HaveOccurred(), "fault %s", fl.Kind)
			out = append(out, err.Error(), fmt.Sprintf("%v|%+v|%#v|%q", err, err, err, err),
				fmt.Sprintf("%v|%+v|%#v|%s", client, client, client, client), fmt.Sprintf("%v|%+v|%#v", c.creds, c.creds, c.creds))
			if fl.Message != "" {
				Expect(err.Error()).To(ContainSubstring("[redacted]"))
			}
		}
		c.kms.ClearFaults()
	}
	return strings.Join(out, "\n")
}
