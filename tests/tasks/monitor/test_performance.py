"""The served model's performance per batch: CBPE's estimate before labels, the realized metric after.

Issue 24, "performance over time". The estimate is checked where it can be known to be
right: labels drawn as Bernoulli(p) from the very probabilities the model outputs (or a
known distortion of them), so the realized metric on a few thousand rows is what a good
estimate must match. The history is checked through the production flow on real files
(tests/tasks/monitor/project.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from tasks.monitor.history import HISTORY_NAME, append_record
from tasks.monitor.performance import estimate_metric, fit_calibration, measure_performance
from tasks.scores.metrics import score
from tests.tasks.monitor.project import items, run_align, write_model, write_project

REFERENCE, BATCH = 3000, 4000
TOLERANCE = 0.02


def _binary(rows: int, seed: int, shift: float = 0.0, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """P(positive) of a model that is calibrated by construction, and labels drawn from it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, spread, rows)
    p = 1 / (1 + np.exp(-(2.0 * x - 0.5)))
    return p, (rng.random(rows) < p).astype(np.float64)


def _estimates(raw_ref: np.ndarray, y_ref: np.ndarray, raw: np.ndarray) -> dict[str, float | None]:
    calibrated = fit_calibration("binary", y_ref, raw_ref).apply(raw)
    return {m: estimate_metric(m, "binary", raw, calibrated) for m in ("auc", "accuracy")}


def _realized(y: np.ndarray, raw: np.ndarray) -> dict[str, float]:
    return {"auc": roc_auc_score(y, raw), "accuracy": accuracy_score(y, raw >= 0.5)}


def test_cbpe_estimates_auc_and_accuracy_of_a_calibrated_model() -> None:
    p_ref, y_ref = _binary(REFERENCE, seed=0)
    p, y = _binary(BATCH, seed=1)
    estimated, realized = _estimates(p_ref, y_ref, p), _realized(y, p)
    for metric in ("auc", "accuracy"):
        assert abs(estimated[metric] - realized[metric]) < TOLERANCE, metric


def test_the_estimate_follows_covariate_shift() -> None:
    """The inputs move to where the model is less sure (same P(y | x)): both metrics drop, as does CBPE."""
    p_ref, y_ref = _binary(REFERENCE, seed=0)
    p_before, y_before = _binary(BATCH, seed=1)
    p, y = _binary(BATCH, seed=2, shift=0.3, spread=0.35)
    estimated, realized, before = _estimates(p_ref, y_ref, p), _realized(y, p), _realized(y_before, p_before)
    for metric in ("auc", "accuracy"):
        assert before[metric] - realized[metric] > 0.08, metric  # the shift costs the model
        assert abs(estimated[metric] - realized[metric]) < TOLERANCE, metric


def test_calibration_on_the_reference_corrects_an_overconfident_model() -> None:
    """Says 0.95 where 0.8 is right: its raw confidence overstates accuracy, its calibrated one does not."""
    p_ref, y_ref = _binary(REFERENCE, seed=0)
    p, y = _binary(BATCH, seed=1)

    def overconfident(q: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-3.0 * np.log(q / (1 - q))))

    raw_ref, raw = overconfident(p_ref), overconfident(p)
    realized = accuracy_score(y, raw >= 0.5)
    assert estimate_metric("accuracy", "binary", raw, raw) - realized > 0.05  # uncalibrated: too rosy
    assert abs(_estimates(raw_ref, y_ref, raw)["accuracy"] - realized) < TOLERANCE


def _softmax_model(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(rows, 2)) @ np.array([[2.0, -1.0, 0.0], [0.0, 1.5, -1.5]])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    return p, y


def test_cbpe_estimates_multiclass_accuracy_after_one_vs_rest_calibration() -> None:
    p_ref, y_ref = _softmax_model(REFERENCE, seed=0)
    p, y = _softmax_model(BATCH, seed=1)
    calibrated = fit_calibration("multiclass", y_ref, p_ref).apply(p)
    assert np.allclose(calibrated.sum(axis=1), 1.0)
    estimated = estimate_metric("accuracy", "multiclass", p, calibrated)
    assert abs(estimated - accuracy_score(y, p.argmax(axis=1))) < TOLERANCE


@pytest.mark.parametrize(
    "metric", ["balanced_accuracy", "f1_macro", "f1_weighted", "quadratic_kappa", "log_loss"]
)
def test_cbpe_estimates_the_chosen_multiclass_metric_from_expected_counts(metric: str) -> None:
    p_ref, y_ref = _softmax_model(REFERENCE, seed=0)
    p, y = _softmax_model(BATCH, seed=1)
    calibrated = fit_calibration("multiclass", y_ref, p_ref).apply(p)
    estimated = estimate_metric(metric, "multiclass", p, calibrated)
    assert abs(estimated - score("multiclass", metric, y, p)) < TOLERANCE


def test_the_served_models_metric_is_the_one_measured() -> None:
    """A bundle selected on balanced accuracy is watched on balanced accuracy, realized and estimated."""
    p_ref, y_ref = _softmax_model(1000, seed=0)
    p, y = _softmax_model(500, seed=1)
    labels = lambda codes: pd.Series(np.asarray(["a", "b", "c"])[codes])  # noqa: E731
    measured = measure_performance(
        "multiclass", ("a", "b", "c"), (labels(y_ref), p_ref), (labels(y), p), resamples=200,
        metric="balanced_accuracy",
    )  # fmt: skip
    assert measured.metric == "balanced_accuracy" and measured.higher_is_better
    assert measured.realized == pytest.approx(balanced_accuracy_score(y, p.argmax(axis=1)))
    assert measured.estimate is not None and measured.low < measured.realized < measured.high


def test_cbpe_estimates_multilabel_micro_f1() -> None:
    rng = np.random.default_rng(0)
    p = rng.beta(0.6, 0.9, size=(REFERENCE + BATCH, 4))
    y = (rng.random(p.shape) < p).astype(np.float64)
    calibrated = fit_calibration("multilabel", y[:REFERENCE], p[:REFERENCE]).apply(p[REFERENCE:])
    estimated = estimate_metric("f1_micro", "multilabel", p[REFERENCE:], calibrated)
    realized = f1_score(y[REFERENCE:], p[REFERENCE:] >= 0.5, average="micro")
    assert abs(estimated - realized) < TOLERANCE


def test_a_multilabel_batch_is_scored_with_its_interval_in_seconds() -> None:
    """The bootstrap rescored compute_metrics (every label's AUC) a thousand times: minutes per run."""
    rng = np.random.default_rng(0)
    p = rng.random((2000, 6))
    y = rng.random(p.shape) < p
    truth = pd.Series([json.dumps([str(c) for c in np.flatnonzero(row)]) for row in y])
    started = time.perf_counter()
    measured = measure_performance("multilabel", tuple("012345"), (truth, p), (truth, p))
    assert time.perf_counter() - started < 20
    assert measured.realized == pytest.approx(f1_score(y, p >= 0.5, average="micro"))


def test_an_unreadable_history_is_moved_aside_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / HISTORY_NAME).write_text("{not json")
    records = append_record({"metric": "auc"}, tmp_path)
    aside = list(tmp_path.glob(f"{HISTORY_NAME}.unreadable-*"))
    assert len(records) == 1 and len(aside) == 1 and aside[0].read_text() == "{not json"


# --- through the monitor flow ------------------------------------------------------------


OLD, NEW = 2000, 400


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model trained on 2,000 rows; since then the sources gained 400 labelled rows."""
    monkeypatch.chdir(tmp_path)
    params = write_project(tmp_path, items(OLD))
    write_model(tmp_path / "models", run_align(tmp_path, params), params)
    write_project(tmp_path, pd.concat([items(OLD), items(NEW, start=OLD, seed=1)]))
    return tmp_path


def _monitor(**kwargs: Any) -> dict[str, Any]:
    from flows.monitor import monitor

    return monitor(**kwargs)


def _history(root: Path) -> list[dict[str, Any]]:
    return json.loads((root / "reports" / "monitor" / HISTORY_NAME).read_text())


def test_a_batch_with_labels_records_realized_interval_and_estimate(prefect_api: str, project: Path) -> None:
    summary = _monitor()
    (record,) = _history(project)
    assert record["metric"] == "auc" and record["labeled_rows"] == record["batch_rows"] == NEW
    assert record["low"] <= record["realized"] <= record["high"] and record["estimate"] is not None
    assert record["reference"] is not None and summary["performance"] == record
    assert Path(summary["files"]["performance.png"]).read_bytes()[:4] == b"\x89PNG"
    assert "- performance: auc: realized" in (project / "reports" / "monitor" / "drift.md").read_text()


def test_each_monitor_run_adds_a_record_to_the_history(prefect_api: str, project: Path) -> None:
    _monitor()
    _monitor()
    first, second = _history(project)
    assert first["digest"] == second["digest"] and first["time"] <= second["time"]


def test_a_batch_without_labels_records_the_estimate_alone(prefect_api: str, project: Path) -> None:
    items(NEW, start=OLD, seed=1).drop(columns="label").to_csv(project / "new.csv", index=False)
    _monitor(input_path="new.csv")
    (record,) = _history(project)
    assert record["estimate"] is not None and record["realized"] is None and record["labeled_rows"] == 0


def test_labels_in_an_input_file_count_where_they_arrived(prefect_api: str, project: Path) -> None:
    """Half of the file's rows are labelled so far (blank cells): the realized metric is theirs."""
    new = items(NEW, start=OLD, seed=1)
    new.loc[new.index[::2], "label"] = None
    new.to_csv(project / "new.csv", index=False)
    _monitor(input_path="new.csv")
    (record,) = _history(project)
    assert record["labeled_rows"] == NEW // 2 and record["realized"] is not None


def test_the_command_prints_the_latest_numbers(
    prefect_api: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    main(["monitor"])
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("performance: ")]
    assert line.startswith("performance: auc: realized ") and f"on {NEW} labelled rows" in line


def _labels(y: np.ndarray) -> pd.Series:
    return pd.Series(np.where(y > 0, "1", "0"))


def _shortfall(batch_labels: np.ndarray, batch_p: np.ndarray) -> bool:
    """Whether the monitor's realized-metric check flags this batch (calibrated on a quiet reference)."""
    from tasks.config import DriftThresholds
    from tasks.monitor.performance import shortfall_check

    p_ref, y_ref = _binary(REFERENCE, seed=21)
    measured = measure_performance(
        "binary", ("0", "1"), (_labels(y_ref), p_ref), (_labels(batch_labels), batch_p)
    )
    check = shortfall_check(measured, DriftThresholds())
    assert check is not None
    return check.drifted


def test_a_concept_change_is_flagged_once_labels_arrive() -> None:
    p, _ = _binary(500, seed=22)
    rng = np.random.default_rng(23)
    reversed_labels = (rng.random(p.shape) < 1 - p).astype(
        np.float64
    )  # same inputs, the label's relation reversed
    assert _shortfall(reversed_labels, p)


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_labels_that_follow_the_model_raise_no_alarm_even_after_covariate_shift(shift: float) -> None:
    p, y = _binary(500, seed=24, shift=shift, spread=0.5 if shift else 1.0)
    assert not _shortfall(y, p)


def test_no_alarm_is_possible_before_labels_arrive() -> None:
    from tasks.config import DriftThresholds
    from tasks.monitor.performance import shortfall_check

    p_ref, y_ref = _binary(REFERENCE, seed=25)
    measured = measure_performance("binary", ("0", "1"), (_labels(y_ref), p_ref), (None, p_ref[:200]))
    assert shortfall_check(measured, DriftThresholds()) is None
