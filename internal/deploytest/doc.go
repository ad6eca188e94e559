// Package deploytest holds the tests of the install artefacts: the kustomize configuration under
// config/, the Helm chart under charts/kms-key-sync, the Dockerfile, the Makefile's build flags
// and the manager binary `make build` writes (bin/manager, which `make test` builds first). The
// tests render the manifests with bin/kustomize and bin/helm (`make helm kustomize`) and have a
// real kube-apiserver (envtest, through testkit) accept them. The package has no non-test code.
package deploytest
