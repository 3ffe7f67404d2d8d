# segmint — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.txt | md5sum | cut -c1-8)

.PHONY: help run demo test test-rust test-rust-debug test-python lint bench bench-micro build pgo venv clean proto proto-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP) ## create .venv with the pinned tools

build: $(STAMP) ## build the Rust extension (profile dist: fat LTO + the committed PGO profile) into .venv
	scripts/with-pgo.sh $(VENV)/bin/maturin develop --profile dist -q

pgo: $(STAMP) ## retake pgo/segmint.profdata.gz on the training workload, then rebuild (needs llvm-profdata)
	PYTHON=$(PY) scripts/pgo.sh

run: build ## build and run the main job: the gRPC sidecar on 127.0.0.1:50051 with the bundled audiences
	$(VENV)/bin/segmint serve

demo: build ## stream a generated workload through the engine in process and print changes
	$(VENV)/bin/segmint demo

test: build proto-check test-rust test-rust-debug test-python ## build, then run every Rust and Python test

test-rust: ## Rust unit, property and doc tests of the core
	cargo test -p segmint-core --release -q

# The same tests unoptimised: debug builds also check the engine against
# itself (every rule after a merge, kept answers, memos, ladders) and
# overflow; fewer proptest cases, since each runs slower.
test-rust-debug: ## the core's Rust tests in a debug build, with its self-checks
	PROPTEST_CASES=$${PROPTEST_CASES:-64} cargo test -p segmint-core -q

test-python: ## pytest: API, differential vs the reference, scenarios, bad input
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(VENV)/bin/pytest tests

lint: $(STAMP) ## cargo fmt/clippy, ruff, mypy, stubtest
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benches scripts
	$(VENV)/bin/ruff format --check python tests benches scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m mypy.stubtest segmint._core

proto: $(STAMP) ## regenerate python/segmint/proto from proto/segmint/v1/*.proto
	PYTHON=$(PY) scripts/gen_proto.sh

proto-check: $(STAMP) ## fail if the generated gRPC code drifted from the .proto files
	@tmp=$$(mktemp -d) && PYTHON=$(PY) scripts/gen_proto.sh $$tmp && \
	  diff -r -x __pycache__ $$tmp python/segmint/proto >/dev/null && rm -rf $$tmp || \
	  { rm -rf $$tmp; echo "python/segmint/proto is out of date: run make proto"; exit 1; }

BENCH_SIZE ?= small
bench: build ## run the benchmark suite and write BENCHMARKS.md (BENCH_SIZE=small|full)
	$(PY) benches/run.py --size $(BENCH_SIZE) --command "make bench BENCH_SIZE=$(BENCH_SIZE)"

bench-micro: build ## pytest-benchmark micro-benchmarks (rule compile, track, is_member, bitmap)
	$(VENV)/bin/pytest benches/test_micro.py --benchmark-only

clean: ## remove build outputs
	cargo clean
	rm -rf $(VENV)
