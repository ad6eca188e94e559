package kmstest

import (
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
)

// Server is an Emulator listening on 127.0.0.1 at a random port, like httptest.Server. The
// Emulator's methods (keys, credentials, faults, stats) are promoted. It serves the KMS API
// and the admin API (under /admin/).
type Server struct {
	*Emulator
	// URL is the endpoint, "http://127.0.0.1:port" or "https://127.0.0.1:port", no trailing /.
	URL string
	ts  *httptest.Server
}

// NewServer starts a plain HTTP emulator. Call Close when done.
func NewServer(opts ...Option) *Server {
	e := New(opts...)
	return newServer(e, httptest.NewServer(e.Handler()))
}

// NewTLSServer starts an HTTPS emulator with a self-signed certificate for 127.0.0.1; trust it
// with Client, Certificate or CertificatePEM. Call Close when done.
func NewTLSServer(opts ...Option) *Server {
	e := New(opts...)
	return newServer(e, httptest.NewTLSServer(e.Handler()))
}

func newServer(e *Emulator, ts *httptest.Server) *Server {
	return &Server{Emulator: e, URL: ts.URL, ts: ts}
}

// Close shuts the server down, closing open connections.
func (s *Server) Close() { s.ts.Close() }

// Endpoint returns URL, the value for the client's endpoint override.
func (s *Server) Endpoint() string { return s.URL }

// ActionURL returns the full ListKmsByTags URL.
func (s *Server) ActionURL() string { return s.URL + s.ActionPath() }

// Client returns an http.Client that trusts the server (for TLS servers, its certificate).
func (s *Server) Client() *http.Client { return s.ts.Client() }

// Certificate returns the TLS server's certificate, nil for a plain HTTP server.
func (s *Server) Certificate() *x509.Certificate { return s.ts.Certificate() }

// CertificatePEM returns the TLS server's self-signed certificate in PEM, to use as the CA a
// client trusts; nil for a plain HTTP server.
func (s *Server) CertificatePEM() []byte {
	c := s.ts.Certificate()
	if c == nil {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// CertPool returns a pool holding the TLS server's certificate, nil for a plain HTTP server.
func (s *Server) CertPool() *x509.CertPool {
	c := s.ts.Certificate()
	if c == nil {
		return nil
	}
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return pool
}
