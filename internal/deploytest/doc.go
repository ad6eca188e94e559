// Package deploytest holds the tests of the install artefacts: the kustomize configuration under
// config/, the Helm chart under charts/kms-key-sync, the Dockerfile and the Makefile's build
// flags. The tests render the manifests with bin/kustomize and bin/helm (`make helm kustomize`)
// and have a real kube-apiserver (envtest) accept them. The package has no non-test code.
package deploytest
