# Two commands on a fresh machine: `make run` (the pipeline on the demo data) and `make test`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Offline hygiene: no telemetry from any tool.
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test test-fast ablation clean-outputs

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	# pip warns once per package about local index folders it does not use; keep the log readable.
	$(PY) -m pip install -q -r requirements.lock 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	touch $@

run: setup
	dvc repro

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

ablation: setup
	$(PY) benchmarks/ablate_drs.py
