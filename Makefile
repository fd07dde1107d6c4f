# blogsite-operator. `make run` and `make test` are the two set-up commands;
# everything they need is installed on the way.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .uv/bin/uv
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(BIN)/blogsite-operator: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet
	@touch $@

.PHONY: install
install: $(BIN)/blogsite-operator ## create .venv with the locked dependencies

.PHONY: tools
tools: ## build the control plane binaries from the Go module proxy (cached)
	hack/build-tools.sh >/dev/null

.PHONY: lint
lint: install ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check operator tests hack
	$(BIN)/ruff format --check operator tests hack
	$(BIN)/mypy
	$(BIN)/mypy --strict tests

.PHONY: crd
crd: install ## regenerate crds/blogsite.yaml (and the chart's copy) from the models
	$(BIN)/blogsite-operator crd > crds/blogsite.yaml
	cp crds/blogsite.yaml deploy/helm/blogsite-operator/files/blogsite-crd.yaml

.PHONY: unit
unit: install ## unit tests (no cluster)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

.PHONY: integration
integration: install tools ## integration tests on the local control plane
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

.PHONY: kind-test
kind-test: install ## with a Docker engine and kind: the chart on kind, one end-to-end scenario
	hack/build-tools.sh helm >/dev/null
	$(BIN)/pytest tests/kind $(PYTEST_ARGS)

.PHONY: system-deps
system-deps: ## Debian packages the tests need (runc, buildah, ...), installed when missing
	hack/system-deps.sh

.PHONY: test
test: system-deps lint install tools ## lint, unit and integration tests (3 at once, then the exclusive ones): what CI runs
	hack/test.sh $(PYTEST_ARGS)

.PHONY: chaos
chaos: system-deps install tools ## the chaos tests at full size: 50 sites, 20 SIGKILLs, the CA down 3 min (BLOGSITE_CHAOS_SEED repeats one)
	BLOGSITE_CHAOS_SITES=$${BLOGSITE_CHAOS_SITES:-50} BLOGSITE_CHAOS_KILLS=$${BLOGSITE_CHAOS_KILLS:-20} \
	BLOGSITE_CHAOS_CA_DOWN_SECONDS=$${BLOGSITE_CHAOS_CA_DOWN_SECONDS:-180} \
		$(BIN)/pytest tests/integration/test_chaos.py $(PYTEST_ARGS)

.PHONY: images
images: ## build the frontend, operator, daedalus stand-in and pause images (cached)
	hack/images.sh build

.PHONY: cluster-up
cluster-up: ## start the local cluster with its real node (idempotent; as root)
	hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## delete the local cluster and put the machine back as it was
	hack/cluster.sh down

.PHONY: kubeconfig
kubeconfig: ## print the path of the local cluster's kubeconfig
	@hack/cluster.sh kubeconfig

.PHONY: run
run: install ## run the operator (against the local cluster unless one is configured)
	@hack/run.sh

.PHONY: bench
bench: install tools ## benchmark: BENCH_SITES (200) BlogSites at once, BENCH_RUNS (1) times; idle writes over BENCH_IDLE (60) s
	$(BIN)/python hack/bench/bench.py

.PHONY: bench-canary
bench-canary: system-deps install tools ## canary figures: bad versions on the real node (failed share, time to revert) beside the health-only gate, and the collector's cost
	$(BIN)/python hack/bench/collector.py
	hack/test.sh -k "canary or health_gate_alone or ten_good_releases"

.PHONY: mutants
mutants: system-deps install tools ## apply each deliberate breakage of hack/mutants.py and run the tests that must catch it
	$(BIN)/python hack/mutants.py $(MUTANTS)
