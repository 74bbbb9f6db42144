# Two commands for a fresh machine: `make demo` and `make test`. Both create the
# virtual environment and install what they need first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Machines without CUDA get the CPU wheel of torch; a looser request pulls a multi-GB CUDA build.
CONSTRAINTS := $(shell command -v nvidia-smi >/dev/null 2>&1 || echo "-c constraints/cpu.txt")
DEMO_DIR ?= demo
# The suite on this many pytest-xdist workers: Ray tests leave cores idle while they wait on
# processes and servers, so two workers on 2 cores finish well before one. Whole modules go to
# a worker (tests/conftest.py).
TEST_WORKERS ?= 2

# meds-evaluation (the MEDS ecosystem's scorer) in a virtual environment of its own: it needs
# polars 2 and pyarrow 26, the project polars < 2 (ACES). The tests run its CLI on our prediction
# tables (tests/test_predict.py); `make test` makes them fail, not skip, when it is missing.
# Measured 2026-12-07 on 2 cores: 25-55 s (pip cache warm or not), 3 min 37 s wall with no pip
# cache under a load average of 16 (27 s of CPU: the rest is download); 660 MB.
MEDS_EVAL_VENV ?= .venv-meds-eval
MEDS_EVAL_STAMP := $(MEDS_EVAL_VENV)/.installed

.PHONY: demo test install browser bench clean meds-eval

install: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CONSTRAINTS) -e '.[dev,bench]'
	touch $(STAMP)

meds-eval: $(MEDS_EVAL_STAMP)

$(MEDS_EVAL_STAMP):
	test -x $(MEDS_EVAL_VENV)/bin/python || python3 -m venv $(MEDS_EVAL_VENV)
	$(MEDS_EVAL_VENV)/bin/python -m pip install -q meds-evaluation==0.0.6
	touch $(MEDS_EVAL_STAMP)

# Debian's chromium for the MLflow UI check (tests/test_browser.py).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: $(STAMP)
	$(PY) -m claims_search.demo --dir $(DEMO_DIR)

test: $(STAMP) browser meds-eval
	MEDS_EVAL_VENV=$(abspath $(MEDS_EVAL_VENV)) CLAIMS_SEARCH_REQUIRE_MEDS_EVAL=1 $(PY) -m pytest -n $(TEST_WORKERS)

bench: $(STAMP)
	@echo "benchmarks live in bench/; see docs/benchmarks.md for each command"

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
