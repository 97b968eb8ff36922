# Sakuga: the commands a person types. `make help` lists them.
# Scripts live in scripts/; everything they write goes to .dev/ and .tools/ (git-ignored).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# Build output outside the work tree, shared between clones; override on the command line.
CARGO_TARGET_DIR ?= $(HOME)/.cache/sakuga/target
export CARGO_TARGET_DIR

.PHONY: help
help: ## list the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  make %-10s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo
	@echo "  CARGO_TARGET_DIR=$(CARGO_TARGET_DIR)"

.PHONY: tools
tools: ## install pinned bao, grpcurl, buf and weed (SeaweedFS) into .tools/bin
	@bash scripts/tools.sh

.PHONY: build
build: ## cargo build --workspace --bins
	cargo build --workspace --bins

.PHONY: cli
cli: ## build the sakuga command into .tools/bin/sakuga (export PATH="$$PWD/.tools/bin:$$PATH")
	cargo build -p sakuga-cli
	@mkdir -p .tools/bin && ln -sf "$(CARGO_TARGET_DIR)/debug/sakuga" .tools/bin/sakuga
	@echo "built .tools/bin/sakuga"

.PHONY: up
up: ## build, then start PostgreSQL/Redis (if needed), OpenBao and the four services
	@bash scripts/up.sh

.PHONY: down
down: ## stop what `make up` / `make test` started, remove the Redis ACL user
	@bash scripts/down.sh

.PHONY: demo
demo: up ## submit a job with grpcurl, stream its progress, show the stored file
	@bash scripts/demo.sh

.PHONY: e2e
e2e: up ## grpcurl alone against the stack: list/describe/health on every port, one job, its file's bytes
	@bash scripts/e2e.sh

.PHONY: test
test: ## buf lint, clippy, then the test suite against real PostgreSQL/Redis/OpenBao
	@bash scripts/test.sh

FUZZ_SECONDS ?= 300
.PHONY: fuzz
fuzz: ## each fuzz target for FUZZ_SECONDS (default 300) on its corpus, keeping new entries in fuzz/corpus/
	@FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

.PHONY: bench
bench: ## load harness, backend and micro benchmarks (release build); report in .dev/bench, figures in benches/RESULTS.md
	@bash scripts/bench.sh

JOBS ?= 1000
.PHONY: chaos
chaos: ## JOBS jobs (default 1000) while generators are SIGKILLed and the scheduler, organizer, Redis and PostgreSQL restart; fails on any loss or duplicate
	@JOBS=$(JOBS) bash scripts/chaos.sh

.PHONY: test-env
test-env: ## print the exports `make test` gives the tests (eval "$(make -s test-env)")
	@bash scripts/test.sh --env

.PHONY: lint
lint: ## rustfmt check, clippy -D warnings, unused dependencies, layer checks, buf lint, buf format check
	@bash scripts/lint.sh

.PHONY: k8s-check
k8s-check: ## validate deploy/k8s: kubernetes-validate, kubectl kustomize of each overlay, probes/non-root/network policies
	@bash scripts/k8s-check.sh

.PHONY: fmt
fmt: ## rustfmt and buf format, in place
	@bash scripts/lint.sh --fix

.PHONY: migrate
migrate: ## apply database migrations with the running stack's configs (after make up)
	@bash scripts/migrate.sh

.PHONY: clean-dev
clean-dev: down ## stop the stack and remove .dev/
	rm -rf .dev
