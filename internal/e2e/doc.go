// Package e2e tests the operator where the controllers suite cannot: with several operator
// processes against one API server. The controllers suite runs one in-process manager for all its
// tests; controller-runtime allows a controller name only once per process, so every test here
// starts the operator (operator.New, as main.go does) in a child process of its own — the test
// binary re-executed with KMS_KEY_SYNC_E2E_OPERATOR set — against a shared envtest API server and
// KMS emulators over HTTPS.
//
// The tests cover:
//   - high availability: two replicas with leader election; the leader stops, the standby takes
//     over, and no change made in between is lost (the takeover time is reported);
//   - an operator stopped (SIGTERM, its context cancelled) or killed (SIGKILL) while a listing is in
//     flight: the ConfigMap is never partial, and a new operator finishes the sync;
//   - secrets: with the log at verbosity 10, no credential appears in the log, events, status,
//     metrics or error strings, through successful syncs and 403, 5xx and malformed answers, even
//     when KMS echoes the credentials back;
//   - TLS: by default an endpoint with an untrusted certificate never receives a request.
//
// Run with KUBEBUILDER_ASSETS set, as for the controllers suite:
//
//	export KUBEBUILDER_ASSETS=$(hack/setup-envtest.sh) && go test ./internal/e2e/ -count=1
package e2e
