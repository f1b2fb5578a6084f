# dnnlab: two commands for a new user: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-slow test-all coverage lint bench clean setup native

setup: $(STAMP) native

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,zoo]'
	touch $(STAMP)

# the global max pooling's C++ kernel (dnnlab.smoothmax.native), built once per source hash and
# torch version (a second of checking when built), so that no run stops for the compiler;
# without a C++ compiler it warns and that pooling runs on torch ops (set-up still succeeds)
native: $(STAMP)
	$(PY) -c 'from dnnlab.smoothmax.native import main; main()'

run: setup
	$(PY) -m pipelines.reproduce

# the fast suite, measured with coverage: every library module must reach 60% of its lines
test: setup
	$(PY) -m coverage run -m pytest -q -m "not slow"
	$(PY) tests/coverage_floor.py 60

test-slow: setup
	$(PY) -m pytest -q -m slow

test-all: setup
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check dnnlab pipelines tests benchmarks conf hydra_plugins
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/opcount.py
	$(PY) benchmarks/parity.py --quick

clean:
	rm -rf outputs multirun wandb .pytest_cache .coverage
