# Two commands set everything up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev,faiss]"
	touch $@

demo: $(VENV)/.installed  ## the main job: MNIST 2-D toy experiment (quick preset) -> runs/mnist-quick/
	$(VENV)/bin/centerloss mnist --preset quick

test: $(VENV)/.installed  ## lint + the whole test suite (CPU, a few minutes)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_center_loss.py

clean:
	rm -rf $(VENV) runs .pytest_cache
