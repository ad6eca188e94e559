#!/usr/bin/env bash
# Builds the envtest control plane (kube-apiserver and etcd) from the Go module proxy, because
# setup-envtest's download of prebuilt binaries cannot reach its bucket from here.
# Prints the assets directory on stdout; everything else goes to stderr.
# Skips the build when KUBEBUILDER_ASSETS is set or the binaries are already present.
set -euo pipefail

K8S_VERSION="${ENVTEST_K8S_VERSION:-1.37.2}"
ETCD_VERSION="${ENVTEST_ETCD_VERSION:-3.7.3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="${ROOT}/bin/k8s/${K8S_VERSION}-linux-amd64"

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  echo "${KUBEBUILDER_ASSETS}"
  exit 0
fi
if [[ -x "${ASSETS}/kube-apiserver" && -x "${ASSETS}/etcd" ]]; then
  echo "${ASSETS}"
  exit 0
fi

mkdir -p "${ASSETS}"
WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT
export GOFLAGS=-mod=mod GOWORK=off CGO_ENABLED=0

if [[ ! -x "${ASSETS}/etcd" ]]; then
  echo "Building etcd v${ETCD_VERSION} (about 20 s)..." >&2
  mkdir -p "${WORK}/etcd"
  (
    cd "${WORK}/etcd"
    go mod init envtest-etcd >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}" >&2
    go build -o "${ASSETS}/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
  )
  mv "${ASSETS}/etcd.tmp" "${ASSETS}/etcd"
fi

if [[ ! -x "${ASSETS}/kube-apiserver" ]]; then
  echo "Building kube-apiserver v${K8S_VERSION} (about 5 min on 2 cores)..." >&2
  mkdir -p "${WORK}/apiserver"
  (
    cd "${WORK}/apiserver"
    go mod init envtest-apiserver >/dev/null 2>&1
    # k8s.io/kubernetes points its staging modules at ./staging; point each at its published tag.
    kgomod="$(go mod download -json "k8s.io/kubernetes@v${K8S_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    staging_version="v0.${K8S_VERSION#1.}"
    {
      echo "require k8s.io/kubernetes v${K8S_VERSION}"
      sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#replace \1 => \1 '"${staging_version}"'#p' "${kgomod}"
    } >>go.mod
    cat >tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
    go mod tidy >&2
    go build -o "${ASSETS}/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2
  )
  mv "${ASSETS}/kube-apiserver.tmp" "${ASSETS}/kube-apiserver"
fi

echo "${ASSETS}"
