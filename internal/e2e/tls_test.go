package e2e

import (
	"syscall"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

var _ = Describe("TLS", func() {
	It("verifies the KMS certificate by default: an untrusted endpoint never receives a request", func() {
		f := newFixture(kmstest.WithKeys(kmstest.GenerateKeys(1, nil)...))
		c := f.child()
		c.TrustCA = nil // as without --kms-ca-file: system roots only
		op := startOperator("no-ca", c)
		sel := f.create(f.selector("untrusted"))
		deleteAtCleanup(sel)

		Eventually(readyReason(sel)).Should(Equal(kmsv1alpha1.ReasonKMSRequestFailed))
		Expect(readyMessage(sel)).To(ContainSubstring("certificate signed by unknown authority"))
		// A certificate failure is not retried by the client: one handshake per listing.
		Expect(readyMessage(sel)).NotTo(ContainSubstring("giving up after"))
		Consistently(func() int64 { return f.kms.Stats().Total }).Should(BeZero(), "a request, and with it the token, reached the untrusted server")
		Expect(op.stop(syscall.SIGTERM)).To(BeTrue())
	})
})
