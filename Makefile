# trainkit: the two Quickstart commands are `make demo` and `make test`; CI (.ci/run) runs
# `make test`, then `make docs` in the test venv.
#
# Virtual environments: $(VENV) for the demo, development and docs (an editable install),
# $(TEST_VENV) for `make test`, rebuilt on each run. PyTorch: a torch that the base Python
# already imports is reused (the venv then sees system site-packages); otherwise
# $(TORCH_SPEC) is installed first, from $(TORCH_INDEX) when given. Where pip has a CPU
# build of that version at hand (as on our CI machines), that is what it takes; elsewhere,
# for a CPU-only build instead of PyPI's CUDA one, run e.g.
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
TEST_VENV ?= .venv-test
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
TPY := $(TEST_VENV)/bin/python
SDIST_TREE := build/sdist-tree

# $(call make-venv,DIR): a venv at DIR with torch importable (see above).
define make-venv
	@test -x $(1)/bin/python || { \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "reusing the torch of $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(1); \
	  else $(PYTHON) -m venv $(1); fi; }
	@$(1)/bin/python -c "import torch" 2>/dev/null || \
	  $(1)/bin/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
endef

.PHONY: venv install install-dev demo test test-src test-gpu lint dist docs bench clean

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
	cd $(SDIST_TREE) && TRAINKIT_TEST_INSTALLED=1 $(abspath $(TPY)) -m pytest -q -p no:cacheprovider

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
	rm -rf $(VENV) $(TEST_VENV) runs dist build .pytest_cache .hypothesis src/*.egg-info
