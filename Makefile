# Two entry points: `make demo` (whole pipeline on the demo data) and `make test`.
# Both create .venv and install on first use, and skip that when nothing changed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test install server-stop clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

demo: $(INSTALLED)
	@test -d .dvc || dvc init --quiet
	fuseline server start
	dvc repro
	@echo
	@echo "Results:"
	@echo "  metrics      reports/metrics.json   (dvc metrics show)"
	@echo "  plots        reports/plots/, reports/train/   (dvc plots show)"
	@echo "  model bundle models/"
	@echo "  Prefect UI   http://127.0.0.1:4200   (stop it with: make server-stop)"
	@$(BIN)/python -c "import json; m = json.load(open('reports/metrics.json')); k = m['primary_metric']; \
	print(f'  {k}: fused {m[\"test\"][k]:.4f}; ' + ', '.join(f'{b} only {v[k]:.4f}' for b, v in m['baselines'].items()))"

test: $(INSTALLED)
	$(BIN)/python -m pytest

server-stop: $(INSTALLED)
	fuseline server stop

clean:
	rm -rf data/raw data/aligned data/features models reports
