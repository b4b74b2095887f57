"""The scheduled monitor watches the served model: its own train rows against the rows it never saw.

Issue 24, findings 1 and 2. Without `--input` the monitor compared the train rows with every
row the sources held, the train rows included: 10,000 old rows plus 1,000 new ones shifted
by one standard deviation gave a PSI of 0.007 where the new rows alone give 0.9. And its
reference and predictions came from models/, which after a retrain that was not promoted
is the rejected candidate. Each test runs the real flow on real files (tests/tasks/monitor/project.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.config import DriftThresholds, load_params
from tasks.monitor.rows import batch_from_sources, split_rows
from tasks.monitor.tabular import tabular_checks
from tasks.serve.promotion import decide, promote
from tests.tasks.monitor.project import items, run_align, write_model, write_project

OLD, NEW = 10_000, 1_000


def _sources_now() -> pd.DataFrame:
    """The 10,000 rows the model was trained on and 1,000 added since, priced one std higher."""
    return pd.concat([items(OLD), items(NEW, start=OLD, shift=1.0, seed=1)])


def _monitor(**kwargs: Any) -> dict[str, Any]:
    from flows.monitor import monitor

    return monitor(**kwargs)


def _price(summary: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in summary["checks"] if c["column"] == "price" and c["aspect"] == "distribution")


@pytest.fixture()
def grown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model trained on 10,000 rows; since then the sources gained 1,000 rows priced one std higher."""
    monkeypatch.chdir(tmp_path)
    params = write_project(tmp_path, items(OLD))
    write_model(tmp_path / "models", run_align(tmp_path, params), params)
    write_project(tmp_path, _sources_now())
    return tmp_path


def test_the_rows_old_and_new_together_hide_the_shift(grown: Path) -> None:
    """What the monitor used to compare: the train rows against all 11,000 current rows."""
    params = load_params(grown / "params.yaml")
    aligned = pd.read_parquet(grown / "data" / "aligned" / "aligned.parquet")
    every_row = batch_from_sources(params.data)
    (check,) = tabular_checks(split_rows(aligned, "train"), every_row, params.data, DriftThresholds())[:1]
    assert check.column == "price" and check.score < 0.02 and not check.drifted


def test_the_scheduled_monitor_flags_a_shift_in_the_new_rows(prefect_api: str, grown: Path) -> None:
    summary = _monitor()
    price = _price(summary)
    assert summary["batch"].startswith(f"{NEW} rows of the current sources the model has not seen")
    assert price["drifted"] and price["score"] > 0.5


def test_without_new_rows_there_is_nothing_to_compare(prefect_api: str, grown: Path) -> None:
    write_project(grown, items(OLD))
    summary = _monitor()
    assert summary["batch"].startswith("0 rows of the current sources") and not summary["drifted"]


def test_after_a_retrain_that_was_not_promoted_the_promoted_model_is_watched(
    prefect_api: str, grown: Path
) -> None:
    """v0001 (10,000 rows) is promoted; the retrain on all 11,000 rows was not, yet wrote models/."""
    promote(grown / "registry", grown / "models", {}, decide("auc", 0.8, None, 0.0))
    params = load_params(grown / "params.yaml")
    write_model(grown / "models", run_align(grown, params), params, seed=1)
    summary = _monitor()
    promoted = (grown / "registry" / "v0001" / "model").resolve()
    assert summary["model"] == str(promoted) and f"train rows of {promoted}," in summary["reference"]
    assert _price(summary)["drifted"]  # models/ has seen the new rows: against it they are no batch


def test_the_reference_is_the_served_models_split_not_the_last_runs(prefect_api: str, grown: Path) -> None:
    """data/aligned re-split since (another seed): the reference is still the rows the model trained on."""
    aligned = run_align(grown, write_project(grown, items(OLD), split_seed=9))
    summary = _monitor()
    lineage = pd.read_parquet(grown / "models" / "lineage.parquet")
    trained = int((lineage["split"] == "train").sum())
    assert summary["reference"].startswith(f"{trained} of the {trained} train rows")
    assert not np.array_equal(aligned["split"].to_numpy(), lineage["split"].to_numpy())


def test_a_last_run_without_a_column_the_served_model_reads_is_no_schema_change(
    prefect_api: str, grown: Path
) -> None:
    """A params.yaml edit left price out of one run (then was reverted): data/aligned lacks it.

    The served model still reads price, and the sources still have it; the reference is read
    from them afresh, so the monitor reports the shift in the new rows, not a vanished column
    (bench/lifecycle.py's mistaken edits were two false alarms before this).
    """
    run_align(
        grown, write_project(grown, _sources_now(), columns={"categorical": ["category"], "numeric": []})
    )
    write_project(grown, _sources_now())  # reverted
    summary = _monitor()
    assert not [c for c in summary["checks"] if c["aspect"] == "schema"]
    assert "as the current sources" in summary["reference"] and _price(summary)["drifted"]


def test_a_shift_since_the_last_retrain_is_not_diluted_by_older_rows_the_served_model_missed(
    prefect_api: str, grown: Path
) -> None:
    """v0001 (10,000 rows) is promoted; 4,000 quiet rows arrive and their retrain is kept, not
    promoted (models/); then 500 rows priced one std higher. The served model has seen none of
    the 4,500, where the shift is diluted (a season's covariate event went unflagged so); the
    500 that no model has trained on yet are compared on their own as well, and carry it."""
    promote(grown / "registry", grown / "models", {}, decide("auc", 0.8, None, 0.0))
    quiet = pd.concat([items(OLD), items(4_000, start=OLD, seed=2)])
    params = write_project(grown, quiet)
    write_model(grown / "models", run_align(grown, params), params, seed=1)
    write_project(grown, pd.concat([quiet, items(500, start=OLD + 4_000, shift=1.0, seed=3)]))
    summary = _monitor()
    whole = _price(summary)
    newest = next(
        c for c in summary["checks"] if c["column"] == "price" and c["aspect"] == "distribution, newest rows"
    )
    assert whole["batch_rows"] == 4_500 and not whole["drifted"]
    assert newest["batch_rows"] == 500 and newest["drifted"] and newest["score"] > 0.5
    assert summary["drifted"]


def test_with_the_served_model_the_last_trained_there_are_no_newest_rows_apart(
    prefect_api: str, grown: Path
) -> None:
    summary = _monitor()  # models/ is served: its unseen rows are all since the last retrain
    assert not [c for c in summary["checks"] if c["aspect"].endswith("newest rows")]
