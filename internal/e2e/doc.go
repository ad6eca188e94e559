// Package e2e tests the operator where the controllers suite cannot: operators that stop, are
// killed, restart or hand over to a standby, and operators run with settings of their own, all
// against a shared envtest API server (testkit.Env) and KMS emulators over HTTPS. Every operator
// authenticates as the operator's own user, bound to the generated RBAC only.
//
// An operator that a spec stops, kills or restarts, or that elects a leader, runs in a child
// process (operator.New, as main.go does, in the test binary re-executed with
// KMS_KEY_SYNC_E2E_OPERATOR set): only a process of its own can be killed, or exit and release
// its lease as main does. Other operators run in this process, each watching its spec's
// namespace only.
//
// The tests cover:
//   - high availability: two replicas with leader election; the leader stops, the standby takes
//     over, and no change made in between is lost (the takeover time is reported);
//   - an operator stopped (SIGTERM, its context cancelled) or killed (SIGKILL) while a listing is in
//     flight: the ConfigMap is never partial, and a new operator finishes the sync;
//   - durable reconcile state: after a restart or a failover, selectors that synced within their
//     interval are not listed again (the listing counts are reported);
//   - secrets: with every log at verbosity 10, no credential appears in the log, events, status,
//     metrics or error strings, through successful syncs and 403, 5xx and malformed answers, even
//     when KMS echoes the credentials back;
//   - TLS: by default an endpoint with an untrusted certificate never receives a request.
//
// Run with KUBEBUILDER_ASSETS set, as for the controllers suite:
//
//	export KUBEBUILDER_ASSETS=$(hack/setup-envtest.sh) && go test ./internal/e2e/ -count=1
package e2e
