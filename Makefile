# trainkit: the two Quickstart commands are `make demo` and `make test`.
#
# Installs into a virtual environment ($(VENV)). PyTorch: a torch that the base Python
# already imports is reused (the venv then sees system site-packages); otherwise
# $(TORCH_SPEC) is installed first, from $(TORCH_INDEX) when given. Where pip has a CPU
# build of that version at hand (as on our CI machines), that is what it takes; elsewhere,
# for a CPU-only build instead of PyPI's CUDA one, run e.g.
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python

.PHONY: venv install install-dev demo test bench clean

venv:
	@test -x $(PY) || { \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "reusing the torch of $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; }
	@$(PY) -c "import torch" 2>/dev/null || \
	  $(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"

install: venv
	$(PY) -m pip install -q -e ".[examples]"

install-dev: venv
	$(PY) -m pip install -q -e ".[dev]"

demo: install
	$(PY) examples/pointer_v45.py

test: install-dev
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/throughput.py --device cpu --quick

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis src/*.egg-info
