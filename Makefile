# hetq: set-up and the two Quickstart commands. Everything lives in .venv (created here).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint bench clean chromium

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned to the CPU wheel on disk; then the project with its test extras.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
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

test: setup chromium lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/hetq bench fi

clean:
	rm -rf $(VENV) runs
