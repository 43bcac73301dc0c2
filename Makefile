# alignax: the two set-up commands for a fresh machine are `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.alignax-installed
# Persistent XLA compilation cache, outside the repo, shared by test runs and the demo.
export JAX_COMPILATION_CACHE_DIR ?= $(HOME)/.cache/alignax/jax
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0
export JAX_PLATFORMS ?= cpu
# pytest workers: 2 on the 2-core CI machine.
PYTEST_WORKERS ?= 2

.PHONY: demo test lint venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch goes in first and pinned: the CPU build on disk. A bare `torch` pulls a multi-GB CUDA
# build. It is a test-only oracle, never a runtime dependency of alignax.
$(STAMP): setup.py | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,hf,tfds]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/alignax demo --workdir runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check alignax tests experiments benchmarks

test: $(STAMP) lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) tests

clean:
	rm -rf $(VENV) .pytest_cache
