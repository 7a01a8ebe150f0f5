# Two commands set everything up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The shared data beside the checkout (MNIST, LFW); the library itself assumes no layout. Override at will.
export CENTERLOSS_DATA ?= $(abspath ../shared/data)

.PHONY: demo test lint bench clean

# torch first, pinned by constraints.txt to this machine's CPU wheel: an unpinned torch pulls a CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

demo: $(VENV)/.installed  ## the main job: MNIST 2-D experiment (quick preset) -> runs/mnist-quick/
	$(VENV)/bin/centerloss mnist --preset quick

test: $(VENV)/.installed  ## lint + the whole test suite (CPU; a test that hangs fails after 10 minutes)
	$(VENV)/bin/ruff check src tests benchmarks docs
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks docs

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_center_loss.py

clean:
	rm -rf $(VENV) runs .pytest_cache
