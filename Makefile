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
# Byte-code is compiled on first import (the few thousand modules a run imports), not by pip
# for all of torch / transformers / jax at install: on the 2-core machine the install took
# 108 s with pip compiling and 46 s without; the first import then costs ~10 s once.
unexport PYTHONDONTWRITEBYTECODE
PIP_INSTALL := $(PIP) install -q --no-compile

.PHONY: demo test lint venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch goes in first and pinned: the CPU build on disk. A bare `torch` pulls a multi-GB CUDA
# build. It is a test-only oracle, never a runtime dependency of alignax.
$(STAMP): setup.py | $(PY)
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[test,hf,tfds]"
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
