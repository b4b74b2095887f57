from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.evaluate.metrics import PRIMARY_METRIC, compute_metrics, higher_is_better


def test_binary_keys() -> None:
    metrics = compute_metrics("binary", np.array([0, 1, 1, 0]), np.array([0.2, 0.7, 0.4, 0.1]))
    assert set(metrics) == {"auc", "accuracy", "f1", "log_loss"}


def test_multiclass_keys() -> None:
    prob = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    metrics = compute_metrics("multiclass", np.array([0, 1, 2]), prob)
    assert set(metrics) == {"accuracy", "f1_macro", "f1_weighted", "log_loss"}


def test_regression_keys() -> None:
    metrics = compute_metrics("regression", np.array([1.0, 2.0]), np.array([1.0, 3.0]))
    assert set(metrics) == {"rmse", "mae", "r2"}


def test_binary_known_values() -> None:
    # Ranking: positives 0.7, 0.4 vs negatives 0.2, 0.1 -> perfect AUC; 0.4 is below 0.5.
    metrics = compute_metrics("binary", np.array([0, 1, 1, 0]), np.array([0.2, 0.7, 0.4, 0.1]))
    assert metrics["auc"] == pytest.approx(1.0)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["f1"] == pytest.approx(2 / 3)
    expected_log_loss = -np.mean(np.log([0.8, 0.7, 0.4, 0.9]))
    assert metrics["log_loss"] == pytest.approx(expected_log_loss)


def test_regression_known_values() -> None:
    metrics = compute_metrics("regression", np.array([0.0, 0.0, 0.0, 0.0]), np.array([1, -1, 1, -1]))
    assert metrics["rmse"] == pytest.approx(1.0)
    assert metrics["mae"] == pytest.approx(1.0)


def test_multiclass_log_loss_counts_classes_absent_from_y_true() -> None:
    prob = np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])
    metrics = compute_metrics("multiclass", np.array([0, 0]), prob)
    assert metrics["log_loss"] == pytest.approx(-math.log(0.5))
    assert metrics["accuracy"] == pytest.approx(1.0)


def test_single_class_split_gives_nan_auc_without_crashing() -> None:
    metrics = compute_metrics("binary", np.array([1, 1, 1]), np.array([0.9, 0.6, 0.3]))
    assert math.isnan(metrics["auc"])
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert math.isfinite(metrics["log_loss"])


def test_primary_metric_directions() -> None:
    assert higher_is_better(PRIMARY_METRIC["binary"])
    assert higher_is_better(PRIMARY_METRIC["multiclass"])
    assert not higher_is_better(PRIMARY_METRIC["regression"])
    assert not higher_is_better("log_loss")


def test_unknown_task_and_metric_are_rejected() -> None:
    with pytest.raises(ValueError, match="task"):
        compute_metrics("ranking", np.array([1.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="metric"):
        higher_is_better("auroc")
