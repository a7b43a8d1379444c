# trainkit: the two Quickstart commands are `make demo` and `make test`; CI (.ci/run) runs
# `make test`, then `make docs` in the test venv.
#
# Virtual environments: $(VENV) for the demo, development and docs (an editable install),
# $(TEST_VENV) for `make test`, rebuilt on each run.
#
# PyTorch is installed once per user, torch spec, build and Python version, into $(TORCH_DIR)
# under ~/.cache/trainkit/ (TORCH_CACHE), and every venv of every checkout sees it through a
# .pth file: `make demo` and `make test` share one copy, and a clean clone reuses it (before,
# each venv downloaded and unpacked its own, 4.8 GB with CUDA). A torch that the base Python
# already imports is reused instead (the venv then sees system site-packages). Which build:
#   - a machine with an NVIDIA GPU (nvidia-smi lists one): $(TORCH_SPEC) from the package
#     index, PyPI's CUDA build;
#   - without one: a CPU build, from a wheel pip has at hand (its find-links, as on our CI
#     machines) or else from PyTorch's CPU index ($(TORCH_CPU_INDEX), about 200 MB);
#   - TORCH_INDEX=URL picks the index yourself, e.g. the CPU one on a GPU machine.
PYTHON ?= python3
VENV ?= .venv
TEST_VENV ?= .venv-test
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
# One folder per torch spec, build and Python version, in the user's cache: every checkout and
# every clean clone of this one reuses it (`make clean-torch` removes it).
# Where the user's cache cannot be written (no HOME, a read-only home), the checkout's own
# .venv-torch/ holds it instead.
ifeq ($(origin TORCH_CACHE),undefined)
TORCH_CACHE := $(shell d="$${XDG_CACHE_HOME:-$$HOME/.cache}/trainkit"; \
  if mkdir -p "$$d" 2>/dev/null && [ -w "$$d" ]; then echo "$$d"; else echo "$(CURDIR)/.venv-torch"; fi)
endif
TORCH_FLAVOR = $(if $(TORCH_INDEX),index-$(notdir $(TORCH_INDEX)),$(if $(HAS_GPU),pypi,cpu))
TORCH_DIR ?= $(TORCH_CACHE)/$(subst ==,-,$(TORCH_SPEC))-$(TORCH_FLAVOR)-py$(PY_VERSION)
# `make test` runs the suite on 2 processes (pytest-xdist, a test file per process at a time:
# module fixtures are built once); PYTEST_WORKERS=0 runs it in one.
PYTEST_WORKERS ?= 2
PY := $(VENV)/bin/python
TPY := $(TEST_VENV)/bin/python
SDIST_TREE := build/sdist-tree

# $(TORCH_DIR): torch and what it needs, installed once (see above); .done marks it complete.
# It is staged in a folder of its own and renamed into place, so two checkouts building it at
# once do not mix their files: the later rename finds it there and drops its own copy.
$(TORCH_DIR)/.done:
	@mkdir -p $(dir $(TORCH_DIR))
	@if [ -d $(TORCH_DIR) ] && [ ! -f $(TORCH_DIR)/.done ]; then rm -rf $(TORCH_DIR); fi
	@stage=$(TORCH_DIR).partial-$$$$; wheels=$$stage.wheels; pip=$$stage.pip/bin/python; \
	rm -rf $$stage $$stage.pip $$wheels; $(PYTHON) -m venv $$stage.pip || exit 1; \
	if [ -n "$(TORCH_INDEX)" ]; then \
	  echo "torch: $(TORCH_SPEC) from $(TORCH_INDEX) into $(TORCH_DIR)"; \
	  $$pip -m pip install -q --target $$stage --index-url $(TORCH_INDEX) "$(TORCH_SPEC)"; \
	elif [ -n "$(HAS_GPU)" ]; then \
	  echo "torch: a GPU is here: $(TORCH_SPEC) from the package index (CUDA build) into $(TORCH_DIR)"; \
	  $$pip -m pip install -q --target $$stage "$(TORCH_SPEC)"; \
	elif $$pip -m pip download -q --no-index --no-deps -d $$wheels "$(TORCH_SPEC)" 2>/dev/null; then \
	  echo "torch: no GPU here: $$(ls $$wheels), a wheel pip has at hand, into $(TORCH_DIR)"; \
	  $$pip -m pip install -q --target $$stage $$wheels/*.whl; \
	else \
	  echo "torch: no GPU here: the CPU build of $(TORCH_SPEC) from $(TORCH_CPU_INDEX) into $(TORCH_DIR)"; \
	  $$pip -m pip install -q --target $$stage --index-url $(TORCH_CPU_INDEX) "$(TORCH_SPEC)"; \
	fi; status=$$?; rm -rf $$stage.pip $$wheels; \
	if [ $$status -ne 0 ]; then rm -rf $$stage; exit $$status; fi; \
	touch $$stage/.done; \
	$(PYTHON) -c 'import os, sys; os.rename(sys.argv[1], sys.argv[2])' $$stage $(TORCH_DIR) 2>/dev/null \
	  || { rm -rf $$stage; test -f $@; }

# $(call make-venv,DIR): a venv at DIR with torch importable (see above).
define make-venv
	@test -x $(1)/bin/python || { \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "reusing the torch of $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(1); \
	  else $(PYTHON) -m venv $(1); fi; }
	@$(1)/bin/python -c "import torch" 2>/dev/null || { \
	  $(MAKE) --no-print-directory $(TORCH_DIR)/.done && \
	  echo "$(abspath $(TORCH_DIR))" > "$$($(1)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_trainkit_torch.pth"; }
	@$(1)/bin/python -c "import torch" || { echo "torch does not import in $(1)"; exit 1; }
endef

.PHONY: venv install install-dev demo test test-src test-gpu lint dist docs bench clean clean-torch

venv:
	$(call make-venv,$(VENV))

install: venv
	$(PY) -m pip install -q -e ".[examples]"

install-dev: venv
	$(PY) -m pip install -q -e ".[dev]"

demo: install
	$(PY) examples/pointer_v45.py

# What CI runs: build the sdist and the wheel (the wheel from the sdist), install the wheel
# into a fresh venv, and run the suite from the unpacked sdist with src/ removed, so the
# tests import the installed package and a file missing from either archive fails them.
test:
	rm -rf $(TEST_VENV) dist $(SDIST_TREE)
	$(call make-venv,$(TEST_VENV))
	$(TPY) -m pip install -q build
	$(TPY) -m build --outdir dist .
	$(TPY) -m pip install -q "$$(ls dist/*.whl)[dev]"
	mkdir -p $(SDIST_TREE) && tar -xzf dist/*.tar.gz -C $(SDIST_TREE) --strip-components=1
	rm -rf $(SDIST_TREE)/src
	cd $(SDIST_TREE) && TRAINKIT_TEST_INSTALLED=1 $(abspath $(TPY)) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile --durations=15

# On a machine with a GPU: the whole suite, CUDA tests included, against src/ with the
# python that has a CUDA torch; writes benchmarks/results/test-gpu-<date>.txt to commit.
# Run it whenever a change touches src/ (CI has no GPU). PYTEST_ARGS: e.g. -n 8.
test-gpu:
	PYTHON=$(PYTHON) bash tools/test_gpu.sh $(PYTEST_ARGS)

# The formatter and the linter (settings in pyproject.toml); CI runs this after `make test`,
# in the test venv. `ruff format src examples tests benchmarks tools` fixes the layout.
LINT_PATHS := src examples tests benchmarks tools
lint:
	@test -x $(VENV)/bin/ruff || { echo "no ruff in $(VENV): run make install-dev first"; exit 1; }
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/ruff check $(LINT_PATHS)

# The quick loop while editing: the suite against src/ in the development venv.
test-src: install-dev
	$(PY) -m pytest -q

dist: install-dev
	rm -rf dist && $(PY) -m build --outdir dist .

# The API reference and every docs/ page; --strict turns any warning into an error.
docs: venv
	$(PY) -m pip install -q -e ".[docs]"
	$(PY) -m mkdocs build --strict --site-dir build/site

bench: install
	$(PY) benchmarks/throughput.py --device cpu --quick

clean:
	rm -rf $(VENV) $(TEST_VENV) runs dist build .pytest_cache .hypothesis src/*.egg-info .venv-torch-py* .venv-torch

# The shared torch folder of this spec, build and Python version (see TORCH_DIR above).
clean-torch:
	rm -rf $(TORCH_DIR) $(TORCH_DIR).partial-*
