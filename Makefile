# The two commands of the README. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch/torchvision first, pinned to the builds this machine (and CI) carries on disk;
# a plain range would let pip pull a multi-GB download on a connected machine.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv install install-dev chromium test test-fast demo bench clean

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

# The hle explore browser test drives the distribution's chromium (Playwright's browser
# downloads are never used). Installed with apt when missing and running as root; else
# nothing happens here and that test skips, saying why.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1; } || true

test: $(VENV)/.installed-dev chromium
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed-dev chromium
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
