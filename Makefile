# neuron-operator — run `make help` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
export PYTHONPATH := $(CURDIR)/e2e
export UV_CACHE_DIR ?= $(HOME)/.cache/neuron-operator/uv-cache
PYTEST_ARGS ?=

##@ Getting started
.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

.PHONY: setup
setup: ## Install everything: Debian packages, .venv (torch included), Go-built binaries, kind node image, project images
	@bash .ci/bootstrap

.PHONY: demo
demo: setup ## Local kind cluster + operator (Helm chart, its image) + real compiles + real serving (cpu, and inf2 on the simulated Neuron node)
	@$(PY) e2e/demo.py up

.PHONY: demo-down
demo-down: ## Tear the demo down
	@$(PY) e2e/demo.py down

##@ Development
.PHONY: test
test: setup lint mutation ## Lint, the mutation check, then every test (unit, images, local kind cluster); what CI runs
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: ## Only the tests that need no cluster and no image build
	$(PY) -m pytest -m "not cluster and not images" $(PYTEST_ARGS)

.PHONY: mutation
mutation: ## Disable each decision-core rule in .ci/mutations.toml in turn: the fast tests must fail every time
	$(PY) .ci/mutations.py

.PHONY: lint
lint: ## ruff, mypy --strict (and the runtime against Python 3.10), import-linter, hadolint, CRDs up to date
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m mypy --python-version 3.10 -p neuron_runtime
	.venv/bin/lint-imports
	.venv/bin/hadolint Dockerfile e2e/kind/Dockerfile.neuron-sim
	$(PY) -m neuron_operator.crdgen --check

.PHONY: fmt
fmt: ## Format and auto-fix
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

.PHONY: crds
crds: ## Regenerate crds/ and the chart's CRD copy from the pydantic models
	$(PY) -m neuron_operator.crdgen

.PHONY: bench
bench: ## Runtime benchmarks (ratio to the in-process limit), operator latency/write counts, S3 artifact throughput
	$(PY) -m benchmarks
	$(PY) -m benchmarks.operator
	$(PY) -m benchmarks.s3

##@ Images
.PHONY: images
images: ## Build the operator and cpu runtime images locally (Debian-built base; prints OPERATOR_IMAGE=/RUNTIME_IMAGE=)
	@bash e2e/kind/build-images.sh

.PHONY: test-images
test-images: ## Build the images (if their inputs changed), then run them: non-root, read-only, compile + serve
	$(PY) -m pytest -m images $(PYTEST_ARGS)

##@ Local kind cluster
.PHONY: cluster-up
cluster-up: setup ## Create the kind cluster (+ simulated device plugin, kwok fleet); .cluster/kubeconfig
	$(PY) -m localcluster up --state-dir .cluster

.PHONY: cluster-down
cluster-down: ## Stop every process of the local cluster and remove .cluster/
	$(PY) -m localcluster down --state-dir .cluster

.PHONY: docker-down
docker-down: ## Stop the project's private Docker engine (images and build cache stay in ~/.cache/neuron-operator)
	bash e2e/kind/docker-engine.sh stop

.PHONY: build-tools
build-tools: ## Build (or locate cached) etcd, kube-*, kubectl, kwok, helm, promtool from Go modules
	bash e2e/localcluster/build-tools.sh
