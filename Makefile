# dnnlab: two commands for a new user: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-slow test-all coverage lint bench clean setup

setup: $(STAMP)

# the last step compiles the global max pooling's C++ kernel once (dnnlab.smoothmax.native);
# without a C++ compiler it warns and that pooling runs on torch ops (set-up still succeeds)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,zoo]'
	$(PY) -c 'from dnnlab.smoothmax.native import main; main()'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m pipelines.reproduce

# the fast suite, measured with coverage: every library module must reach 60% of its lines
test: $(STAMP)
	$(PY) -m coverage run -m pytest -q -m "not slow"
	$(PY) tests/coverage_floor.py 60

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check dnnlab pipelines tests benchmarks conf hydra_plugins
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/opcount.py

clean:
	rm -rf outputs multirun wandb .pytest_cache .coverage
