# Image URL to use all building/pushing image targets
IMG ?= kms-key-sync:latest
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS ?= -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

# The envtest control plane is built from source by hack/setup-envtest.sh (no prebuilt download).
ENVTEST_K8S_VERSION ?= 1.37.2

SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Display this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: controller-gen ## Generate the CRDs and RBAC from the markers.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./..." output:crd:artifacts:config=config/crd/bases
	go run ./hack/crd-descriptions config/crd/bases/*.yaml

.PHONY: generate
generate: controller-gen ## Generate DeepCopy methods.
	$(CONTROLLER_GEN) object paths="./..."

.PHONY: fmt
fmt: ## Run go fmt against code.
	go fmt ./...

.PHONY: vet
vet: ## Run go vet against code.
	go vet ./...

.PHONY: lint
lint: golangci-lint ## Run golangci-lint.
	$(GOLANGCI_LINT) run

.PHONY: envtest
envtest: ## Build the envtest control plane into bin/k8s (once; about 5 minutes).
	@hack/setup-envtest.sh >/dev/null

.PHONY: test
test: manifests generate fmt vet envtest helm kustomize build ## Run all tests against a real API server and the KMS emulator (the deploy tests run bin/manager).
	KUBEBUILDER_ASSETS="$$(hack/setup-envtest.sh)" go test ./... -timeout 30m -coverprofile cover.out
	$(MAKE) fuzz FUZZTIME=$(TEST_FUZZTIME)

# The bench is a documented command, not a test: it runs the real operator binary against a local
# control plane and the KMS emulator at scale (a few minutes on 2 cores). Run one scenario with
# BENCH_ARGS=--scenarios=b; scenario e (10,000 selectors) runs only when named; BENCH_ARGS=--scale=0.05
# shrinks the scenarios to check the harness quickly. See docs/benchmarks.md. Logs and pprof
# profiles go to bin/bench-out/.
.PHONY: bench
bench: ## Measure the operator at scale (1 to 10,000 selectors) against a naive baseline; prints a markdown table.
	go test ./internal/render/ -run '^$$' -bench '^BenchmarkRecipes10kKeys$$' -benchtime 20x
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o bin/manager .
	go build -o bin/bench ./hack/bench
	assets="$$(hack/setup-envtest.sh)" && KUBEBUILDER_ASSETS="$$assets" bin/bench --manager=bin/manager $(BENCH_ARGS)

# The demo needs only Go: hack/setup-envtest.sh builds the control plane on the first run.
# Pass DEMO_ARGS=-v to see the operator's and the emulator's logs.
.PHONY: demo
demo: ## Run the operator end to end on a local control plane and the KMS emulator, then clean up.
	@assets="$$(hack/setup-envtest.sh)" && KUBEBUILDER_ASSETS="$$assets" go run ./hack/demo $(DEMO_ARGS)

# demo-up runs a built binary rather than go run, which exits 1 whenever it sees Ctrl-C.
.PHONY: demo-up
demo-up: ## Like demo, then keep it running for kubectl (bin/demo.kubeconfig) until Ctrl-C.
	@assets="$$(hack/setup-envtest.sh)" && go build -o bin/demo ./hack/demo && KUBEBUILDER_ASSETS="$$assets" bin/demo --keep-running $(DEMO_ARGS)

FUZZTIME ?= 60s
# make test gives each fuzz target a short run beyond its seed corpus.
TEST_FUZZTIME ?= 10s
.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 60s).
	go test ./internal/kms/ -run='^$$' -fuzz='^FuzzDecodeListResponse$$' -fuzztime=$(FUZZTIME)
	go test ./internal/kms/ -run='^$$' -fuzz='^FuzzBuildRequestBody$$' -fuzztime=$(FUZZTIME)
	go test ./internal/render/ -run='^$$' -fuzz='^FuzzExpression$$' -fuzztime=$(FUZZTIME)

##@ Build

.PHONY: build
build: manifests generate fmt vet ## Build the manager binary.
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o bin/manager .

.PHONY: run
run: manifests generate fmt vet ## Run the operator against the cluster of the current kubeconfig.
	go run . $(ARGS)

.PHONY: emulator
emulator: ## Build the KMS emulator binary into bin/.
	go build -o bin/kms-emulator ./hack/kms-emulator

.PHONY: docker-build
docker-build: ## Build the image (needs a Docker engine).
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t $(IMG) .

##@ Deployment

ifndef ignore-not-found
  ignore-not-found = false
endif

.PHONY: build-installer
build-installer: manifests generate kustomize ## Write dist/install.yaml: CRDs, RBAC and Deployment, with the image IMG.
	mkdir -p dist
	cd config/manager && $(KUSTOMIZE) edit set image controller=$(IMG)
	$(KUSTOMIZE) build config/default > dist/install.yaml

.PHONY: install
install: manifests kustomize ## Install the three CRDs into the cluster of the current kubeconfig.
	$(KUSTOMIZE) build config/crd | $(KUBECTL) apply -f -

.PHONY: uninstall
uninstall: manifests kustomize ## Remove the three CRDs (and so every KmsKeySelector and provider). Call with ignore-not-found=true to ignore resource not found errors.
	$(KUSTOMIZE) build config/crd | $(KUBECTL) delete --ignore-not-found=$(ignore-not-found) -f -

.PHONY: deploy
deploy: manifests kustomize ## Deploy the operator, with the image IMG, to the cluster of the current kubeconfig.
	cd config/manager && $(KUSTOMIZE) edit set image controller=$(IMG)
	$(KUSTOMIZE) build config/default | $(KUBECTL) apply -f -

.PHONY: undeploy
undeploy: kustomize ## Remove the operator and its CRDs. Call with ignore-not-found=true to ignore resource not found errors.
	$(KUSTOMIZE) build config/default | $(KUBECTL) delete --ignore-not-found=$(ignore-not-found) -f -

.PHONY: helm-crds
helm-crds: manifests ## Copy the generated CRDs into the Helm chart (charts/kms-key-sync/crds).
	cp config/crd/bases/*.yaml charts/kms-key-sync/crds/

.PHONY: helm-lint
helm-lint: helm helm-crds ## Lint the Helm chart.
	$(HELM) lint --strict charts/kms-key-sync

.PHONY: helm-package
helm-package: helm helm-crds ## Package the Helm chart into dist/.
	$(HELM) package charts/kms-key-sync -d dist

##@ Build Dependencies

LOCALBIN ?= $(shell pwd)/bin
$(LOCALBIN):
	mkdir -p $(LOCALBIN)

CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint
KUBECTL ?= kubectl
KUSTOMIZE ?= $(LOCALBIN)/kustomize
HELM ?= $(LOCALBIN)/helm

CONTROLLER_TOOLS_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION ?= v2.15.0
# kustomize v5.8.3 needs Go 1.27; v5.8.2 is the newest that builds with the Go 1.26 toolchain.
KUSTOMIZE_VERSION ?= v5.8.2
HELM_VERSION ?= v3.22.0

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN) ## Install controller-gen into bin/.
$(CONTROLLER_GEN): | $(LOCALBIN)
	$(call go-install-tool,$(CONTROLLER_GEN),sigs.k8s.io/controller-tools/cmd/controller-gen,$(CONTROLLER_TOOLS_VERSION))

.PHONY: golangci-lint
golangci-lint: $(GOLANGCI_LINT) ## Install golangci-lint into bin/.
$(GOLANGCI_LINT): | $(LOCALBIN)
	$(call go-install-tool,$(GOLANGCI_LINT),github.com/golangci/golangci-lint/v2/cmd/golangci-lint,$(GOLANGCI_LINT_VERSION))

.PHONY: kustomize
kustomize: $(KUSTOMIZE) ## Install kustomize into bin/.
$(KUSTOMIZE): | $(LOCALBIN)
	$(call go-install-tool,$(KUSTOMIZE),sigs.k8s.io/kustomize/kustomize/v5,$(KUSTOMIZE_VERSION))

.PHONY: helm
helm: $(HELM) ## Install helm into bin/ (builds from source; takes a few minutes).
$(HELM): | $(LOCALBIN)
	$(call go-install-tool,$(HELM),helm.sh/helm/v3/cmd/helm,$(HELM_VERSION))

# go-install-tool installs a pinned tool version into bin/ as name-version, linked from name.
define go-install-tool
@[ -f "$(1)-$(3)" ] || { \
set -e; \
package=$(2)@$(3) ;\
echo "Installing $${package}" ;\
rm -f $(1) || true ;\
GOBIN=$(LOCALBIN) go install $${package} ;\
mv $(1) $(1)-$(3) ;\
} ;\
ln -sf $$(realpath $(1)-$(3)) $(1)
endef
