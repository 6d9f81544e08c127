# dnnscaler — the two set-up commands are `make demo` and `make test`; both create or
# refresh the local virtualenv (.venv) themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The flake gate: `make flake-gate RUNS=20 TESTS=tests/integration/test_triton_latency.py`.
RUNS ?= 20
TESTS ?= tests/integration/test_triton_latency.py tests/integration/test_triton_backend.py tests/integration/test_agent_triton_faults.py tests/integration/test_triton_launcher.py

.PHONY: flake-gate demo test venv lint typecheck protos protos-check unit e2e integration bench-sim bench-triton clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[triton,torch,torchserve,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/dnnscaler demo $(DEMO_ARGS)

# The suite in four pytest runs, three side by side (scripts/test_suite.sh says how and
# why); `pytest` alone runs the whole suite in one process, in order.
test: $(STAMP)
	$(MAKE) --no-print-directory protos-check lint typecheck
	PYTEST=$(BIN)/pytest scripts/test_suite.sh $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e $(PYTEST_ARGS)

integration: $(STAMP)
	$(BIN)/pytest -q -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy src/dnnscaler

protos: $(STAMP)
	scripts/gen_protos.sh $(BIN)/python

# Regenerates into a scratch copy and fails if the committed code differs.
protos-check: $(STAMP)
	scripts/check_protos.sh $(BIN)/python

# Runs TESTS RUNS times; prints each test's pass rate and its assertions' margins.
flake-gate: $(STAMP)
	$(BIN)/python scripts/flake_gate.py -n $(RUNS) --out out/flake -- $(TESTS)

bench-sim: $(STAMP)
	$(BIN)/dnnscaler bench sim --out out/bench-sim

bench-triton: $(STAMP)
	$(BIN)/dnnscaler bench triton --out out/bench-triton

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
