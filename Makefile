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

.PHONY: setup browser run test test-fast ablation clean-outputs server serve mlflow-ui versions versions-diff rollback record-version

# The venv with the pinned packages and this project (editable: the `wsss` command), then a local
# default DVC remote (.dvc-remote/, set in .dvc/config.local).
setup: $(VENV)/.installed
	wsss versions setup-remote

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# pip warns once per package about local index folders it does not use; keep the log readable.
	$(PY) -m pip install -q -r requirements.lock 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	# The project, editable, built by the locked setuptools (the build needs >= 77).
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	touch $@

# The tests' own packages (pytest, playwright), beside the runtime ones.
$(VENV)/.installed-test: requirements-test.lock $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-test.lock 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	touch $@

# A run that changes the pseudo labels leaves a version (commit + tag + dvc push).
run: setup
	wsss run

# The browser test (tests/test_ui_browser.py) drives the Prefect UI in Debian's chromium, never a
# browser downloaded by Playwright; install it when it is missing (apt-get; sudo when not root).
# Present means what the test accepts: $(CHROMIUM) or a chromium on PATH.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ] || command -v chromium >/dev/null; then echo "chromium present"; else \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi

# The ten slowest tests close the log: the suite's budget is 20 minutes on a 2-core machine.
test: setup $(VENV)/.installed-test browser
	$(PY) -m pytest --durations=10

test-fast: setup $(VENV)/.installed-test
	$(PY) -m pytest -m "not slow"

ablation: setup
	$(PY) benchmarks/ablate_drs.py

# Orchestration (docs/orchestration.md). Servers bind 127.0.0.1; `serve` targets the `server` API
# at http://127.0.0.1:4200/api unless PREFECT_API_URL says otherwise.
server: setup
	prefect server start --host 127.0.0.1

serve: setup
	wsss serve

mlflow-ui: setup
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000 --workers 1

# Pseudo-label versions: make versions | make versions-diff A=v1 B=v2 | make rollback V=v1
versions: setup
	wsss versions list

versions-diff: setup
	wsss versions diff $(A) $(B)

rollback: setup
	wsss versions rollback $(V)

record-version: setup
	wsss versions record
