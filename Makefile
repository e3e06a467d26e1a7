# The two commands of the README. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch/torchvision first, pinned to the builds this machine (and CI) carries on disk;
# a plain range would let pip pull a multi-GB download on a connected machine.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv install install-dev test test-fast demo bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS) || $(PIP) install -q "torch>=2.4,<2.15" "torchvision>=0.19,<0.30"
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "not slow"

demo: $(VENV)/.installed
	$(VENV)/bin/hle demo --out runs/demo

# One thread: on this shared 2-core machine two OpenMP threads were slower (docs/benchmarks.md).
bench: $(VENV)/.installed
	$(PY) benchmarks/bench_loss.py --threads 1
	$(PY) benchmarks/bench_decode.py --threads 1
	$(PY) benchmarks/bench_model.py --threads 2
	$(PY) benchmarks/bench_inference.py --threads 1

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
