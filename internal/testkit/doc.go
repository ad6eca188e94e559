// Package testkit is what the envtest suites, the demo and the bench share to stand the operator
// up for real: a kube-apiserver and etcd (envtest) with the CRDs installed and the operator's
// own identity bound to the generated RBAC only, KMS emulators over TLS, builders of the objects
// the operator reads, readers of what it writes, a Prometheus text parser and a reader of the
// RBAC manifests.
//
// What a program such as the demo or the bench needs (StartEnv, NewEmulator, ServeTLS,
// OperatorOptions, StartManager, the builders, ForceSync, ScrapeMetrics, the RBAC reader,
// FreeLoopbackAddress, JSONLogger) reports failures as errors and needs no test framework.
// Fixture, Scrape and the other functions that take or return a gomega.Gomega are for the Ginkgo
// suites: their results plug into Eventually and Consistently.
package testkit
