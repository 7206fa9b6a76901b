# hetq: set-up and the two Quickstart commands. Everything lives in .venv (created here).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run test bench clean

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

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/hetq bench fi

clean:
	rm -rf $(VENV) runs
