# hetq: set-up and the two Quickstart commands. Everything lives in .venv (created here).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run test test-fast lint bench clean chromium

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned to the CPU wheel on disk; then the project with its test extras; then
# MRFI, a peer of `hetq bench fi`, without its dependencies: its wheel requires torchvision,
# which its core never imports (numpy, scipy, pyyaml and torch, which it does, are installed).
$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps mrfi==2.1.0
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/hetq run

# Debian's headless Chromium, for the test that opens the report (root, or sudo, needed once)
chromium:
	@command -v chromium >/dev/null || { SUDO=$$(command -v sudo || true); \
	  $$SUDO apt-get install -y -q chromium || { $$SUDO apt-get update -q && \
	  $$SUDO apt-get install -y -q chromium; }; }

lint: setup
	$(BIN)/ruff check flow tests examples sim

# the whole suite, on both cores (pytest-xdist; modules that cache simulations stay on one worker)
test: setup chromium lint
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# the edit-test loop: unit tests and in-process CLI tests, no Verilator, C-sim or Yosys
test-fast: setup lint
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not slow"

bench: setup
	$(BIN)/hetq bench fi

clean:
	rm -rf $(VENV) runs
