# Lakehouse ETL pipeline. `make` (or `make help`) lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

DATA_DIR ?= data
ROWS     ?= 200000
N        ?= 10000000
PORT     ?= 9042
BIN      := target/release/pipeline
PIPELINE := $(BIN) --data-dir $(DATA_DIR)

.PHONY: help setup build run generate ingest aggregate load lookup verify test test-crash test-scylla lint bench clean-data docker cql-test-server

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

setup: ## Check the toolchain (Rust via rustup) is present; nothing else is needed
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs) and rerun"; exit 1; }
	@cargo --version

build: setup ## Build the release binaries (target/release/pipeline, cql-test-server)
	cargo build --release --locked -p pipeline -p cql-test-server

run: build ## The main job on a small data set: pipeline run --generate (ROWS=200000); load when ScyllaDB answers
	$(PIPELINE) run --generate --rows $(ROWS)

generate: build ## Run the generate stage alone (ARGS="--rows 1000000 --batch 2")
	$(PIPELINE) generate $(ARGS)

ingest: build ## Run the ingest stage alone
	$(PIPELINE) ingest $(ARGS)

aggregate: build ## Run the aggregate stage alone (ARGS="--full")
	$(PIPELINE) aggregate $(ARGS)

test: setup ## Run every test (unit and integration; ScyllaDB parts against the in-repo CQL test server)
	cargo test --workspace --locked

test-crash: setup ## Kill every stage at its failpoints and at 12 random times each; rerun; compare with a clean run
	CRASH_KILLS=12 cargo test --locked -p pipeline --test it crash:: -- --nocapture

test-scylla: setup ## The ScyllaDB tests against a real ScyllaDB: SCYLLA_URI=127.0.0.1:9042 make test-scylla
	@[ -n "$$SCYLLA_URI" ] || { echo "set SCYLLA_URI (e.g. docker compose up -d scylla; SCYLLA_URI=127.0.0.1:9042 make test-scylla)"; exit 2; }
	cargo test --locked -p pipeline --test it scylla::

load: build ## Load changed aggregates into ScyllaDB (SCYLLA_URI, ARGS="--dry-run")
	$(PIPELINE) load $(ARGS)

lookup: build ## A customer's daily totals from ScyllaDB (ARGS="--customer 42")
	$(PIPELINE) lookup $(ARGS)

verify: build ## Compare ScyllaDB with the Delta aggregates
	$(PIPELINE) verify $(ARGS)

lint: setup ## cargo fmt --check and clippy with warnings as errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

bench: build ## Benchmark the stages at N rows (N=10000000) in a fresh temp dir
	bench/run.sh $(N)

cql-test-server: setup ## Run the in-memory CQL test server on PORT (9042) to try load/lookup by hand; not a database
	cargo run --release --locked -p cql-test-server -- --port $(PORT)

clean-data: ## Delete everything under DATA_DIR except its README
	find $(DATA_DIR) -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +

docker: ## Build the container image (needs a Docker engine)
	docker build -t pipeline .
