package e2e

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

var _ = Describe("TLS", func() {
	It("verifies the KMS certificate by default: an untrusted endpoint never receives a request", func() {
		f := newFixture(kmstest.WithKeys(kmstest.GenerateKeys(1, nil)...))
		o, err := operatorOptions("0", f.Namespace)
		Expect(err).NotTo(HaveOccurred())
		// As main without --kms-ca-file: the system roots only.
		o.KMS.Transport, err = kms.NewTransport(nil)
		Expect(err).NotTo(HaveOccurred())
		runOperator(o)
		sel := f.Create(f.Selector("untrusted"))

		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonKMSRequestFailed))
		Expect(readyMessage(f, sel)).To(ContainSubstring("certificate signed by unknown authority"))
		// A certificate failure is not retried by the client: one handshake per listing.
		Expect(readyMessage(f, sel)).NotTo(ContainSubstring("giving up after"))
		// Barrier: the operator retried the sync after its backoff and failed again. A request of
		// either attempt would have been counted before the attempt failed.
		Eventually(failures(f, sel)).Should(BeNumerically(">=", 2))
		Expect(f.KMS.Stats().Total).To(BeZero(), "a request, and with it the token, reached the untrusted server")
	})
})
