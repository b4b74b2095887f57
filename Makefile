# Two entry points: `make demo` (whole pipeline on the demo data) and `make test`.
# Both create .venv and install on first use, and skip that when nothing changed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test install server-stop clean ui serve retrain dvc-remote ui-screenshot

# Where `make demo` puts a DVC remote when none is configured: a directory beside the clone,
# so every clone on this machine pushes to and pulls from the same one. Override:
# make dvc-remote DVC_REMOTE=/mnt/shared/fuseline-dvc
DVC_REMOTE ?= ../fuseline-dvc-remote

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# aiSFX ships the default audio encoder's weights; its metadata pins 2022 numpy/librosa that
	@# fuseline does not use (it needs only the checkpoint), so it is installed without them.
	$(BIN)/python -m pip install --quiet --no-deps 'aisfx==0.1.2'
	@touch $@

demo: $(INSTALLED)
	@test -d .dvc || dvc init --quiet
	@$(MAKE) --no-print-directory dvc-remote
	fuseline check   # params.yaml through fuseline's guarded loader before DVC parses it
	fuseline server start
	fuseline repro   # dvc repro, its stages in one warm process (flows/_stage_host.py)
	@echo
	@echo "Results:"
	@echo "  metrics      reports/metrics.json   (the headline: dvc metrics show, dvc exp show)"
	@echo "  detail       reports/evaluation.json, reports/report.md"
	@echo "  plots        reports/plots/, reports/train/   (dvc plots show)"
	@echo "  model bundle models/   (dvc push stores it in the DVC remote)"
	@$(BIN)/python -c 'from flows.server import read_state; s = read_state(); \
	print("  Prefect UI  ", s.ui_url if s else "not running", "  (stop it with: make server-stop)")'
	@echo
	@grep -m1 -E "^(The final model|There is no baseline)" reports/report.md
	@echo
	fuseline leaderboard

test: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

server-stop: $(INSTALLED)
	fuseline server stop

ui: $(INSTALLED)
	fuseline ui

serve: $(INSTALLED)
	fuseline serve

retrain: $(INSTALLED)
	fuseline retrain

# A local DVC remote unless a default remote exists (kept in .dvc/config.local, not committed).
dvc-remote:
	@dvc remote default >/dev/null 2>&1 || { dvc remote add --local --default local '$(DVC_REMOTE)' >/dev/null && \
		echo "DVC remote 'local' -> $(DVC_REMOTE)  (dvc push / dvc pull)"; }

# Headless Chromium screenshot of a pipeline run in the Prefect UI (needs: apt-get install chromium).
ui-screenshot: $(INSTALLED)
	$(BIN)/python scripts/ui_screenshot.py --output reports/ui/flow-run.png

clean:
	rm -rf data/raw data/aligned data/features models reports
