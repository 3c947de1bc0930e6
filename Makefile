# orchestratord — the team's and CI's entry points. Every target sets up what it needs.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CONFIG  ?=

.PHONY: setup run test stress soak wiring-mutations mutate lint typecheck bench regen pact determinism clean

export PACT_DO_NOT_TRACK := true

TRITON  := $(VENV)/triton-python

$(STAMP): pyproject.toml ci/llama-wheel.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	bash ci/llama-wheel.sh $(BIN)/python
	touch $(STAMP)

# Tests only: a real Triton (nvidia-pytriton) in its own cached venv (it pins numpy<2).
$(TRITON): ci/triton-venv.sh $(STAMP)
	bash ci/triton-venv.sh > $(TRITON)

# Tests only: Debian's Prometheus and promtool, for the dashboards and alert rules test.
PROMETHEUS := $(VENV)/.prometheus
$(PROMETHEUS): $(STAMP)
	command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	   apt-get install -y -qq --no-install-recommends prometheus >/dev/null)
	touch $(PROMETHEUS)

# Tests only: Debian's PostgreSQL (initdb, pg_ctl; tests start throwaway servers with them).
POSTGRES := $(VENV)/.postgres
$(POSTGRES): $(STAMP)
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	   apt-get install -y -qq --no-install-recommends postgresql >/dev/null)
	touch $(POSTGRES)

setup: $(STAMP)  ## .venv with the project, dev tools and llama-server

run: setup  ## serve the embedded default (or CONFIG=file.yaml)
	$(BIN)/orchestratord serve $(if $(CONFIG),--config $(CONFIG))

# The traceability gate then reads what passed in this very run (OC-TEST-8007).
RESULTS := $(VENV)/test-results.json

test: setup $(TRITON) $(PROMETHEUS) $(POSTGRES) lint typecheck  ## everything CI gates on (in file order)
	rm -f $(RESULTS)
	ORCH_TEST_RESULTS=$(RESULTS) $(BIN)/python -m pytest -q -p no:cacheprovider -p no:randomly
	$(BIN)/python ci/check_traceability.py --results $(RESULTS)

# Flakiness hunt: every core busy, random order, fresh sessions (see ci/stress.sh).
STRESS_CONFORMANCE ?= 20
STRESS_SUITE ?= 5
stress: setup $(TRITON)  ## tests/conformance 20x, then the whole suite 5x, random order, under CPU load
	bash ci/stress.sh $(STRESS_CONFORMANCE) tests/conformance
	bash ci/stress.sh $(STRESS_SUITE)

# Not in `make test`: minutes of hostile load, then schemathesis at full strength.
SOAK_MINUTES ?= 2
soak: setup  ## bounded soak (docs/RELIABILITY.md), then schemathesis, all checks, 1,000 examples an operation
	$(BIN)/python -m test_harness.soak.run --minutes $(SOAK_MINUTES)
	SCHEMATHESIS_EXAMPLES=1000 SCHEMATHESIS_CHECKS=all $(BIN)/python -m pytest -q -p no:cacheprovider -p no:randomly --timeout 1200 tests/daemon/test_schemathesis.py

mutate: setup  ## mutation testing of orchestrator_core (mutmut, ~10 min here); figures in docs/TESTING.md
	$(BIN)/python -m pip install --quiet -e '.[mutate]'
	rm -rf mutants
	$(BIN)/mutmut run > $(VENV)/mutmut.log 2>&1 || (tail -c 2000 $(VENV)/mutmut.log; exit 1)
	tail -c 160 $(VENV)/mutmut.log | tr '\r' '\n' | tail -2  # 🎉 killed 🫥 no tests ⏰ timeout 🙁 survived
	$(BIN)/mutmut results | grep -v ': killed'

wiring-mutations: setup  ## plant each wiring bug of docs/TESTING.md, check its test catches it
	$(BIN)/python -m test_harness.wiring_mutations

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy orchestrator_core worker_adapters pool_managerd orchestratord

regen: setup  ## write contracts/ (OpenAPI, config schema) from the pydantic models; pool_managerd/proto/ from contracts/proto/
	$(BIN)/python -m orchestratord.api.openapi contracts
	$(BIN)/python ci/regen_proto.py

pact: setup $(TRITON)  ## record the consumer pact (contracts/pacts/), then verify every pact
	$(BIN)/python -m tests.pact.consumer
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/pact

determinism: setup $(TRITON)  ## the byte-exact determinism gate (llama.cpp + mock, across a restart)
	$(BIN)/python -m test_harness.determinism_suite.run

bench: setup  ## benchmarks (not tests); results go to docs/BENCHMARKS.md by hand
	$(BIN)/python -m test_harness.bench.core_queue
	$(BIN)/python -m test_harness.bench.daemon_relay
	$(BIN)/python -m test_harness.bench.llamacpp_relay
	$(BIN)/python -m test_harness.bench.routers --engine mock
	$(BIN)/python -m test_harness.bench.routers --engine llamacpp --streams 1 16 64
	$(BIN)/python -m test_harness.bench.store
	$(BIN)/python -m test_harness.bench.batches
	$(BIN)/python -m test_harness.bench.tenants
	$(BIN)/python -m test_harness.bench.tracing
	$(BIN)/python -m test_harness.bench.prefix
	$(BIN)/python -m test_harness.bench.prefix --cache-ram 32
	$(BIN)/python -m test_harness.bench.fairness

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
