package testkit

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// NewEmulator starts a KMS emulator over TLS that accepts token (no token when empty), then
// applies opts. The operator trusts it with EmulatorCA or EmulatorTransport. Call Close when done.
func NewEmulator(token string, opts ...kmstest.Option) *kmstest.Server {
	if token != "" {
		opts = append([]kmstest.Option{kmstest.WithToken(token)}, opts...)
	}
	return kmstest.NewTLSServer(opts...)
}

// ServeTLS serves h over TLS on a loopback port, with the certificate every emulator presents:
// for an emulator behind a handler of the caller's, such as one that logs the requests. Call
// Close when done.
func ServeTLS(h http.Handler) *httptest.Server {
	return httptest.NewTLSServer(h)
}

// Every server kmstest.NewTLSServer starts presents the same self-signed certificate, so one
// probe tells the CA of them all.
var emulatorCA = sync.OnceValue(func() []byte {
	probe := kmstest.NewTLSServer()
	defer probe.Close()
	return probe.CertificatePEM()
})

// EmulatorCA returns, in PEM, the certificate that every TLS emulator presents: the CA the
// operator must trust (its --kms-ca-file).
func EmulatorCA() []byte { return slices.Clone(emulatorCA()) }

// EmulatorTransport returns the operator's KMS transport trusting EmulatorCA besides the system
// roots, for kms.Config.Transport.
func EmulatorTransport() (*http.Transport, error) {
	return kms.NewTransport(EmulatorCA())
}
