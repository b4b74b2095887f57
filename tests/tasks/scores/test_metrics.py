from __future__ import annotations

import math
from typing import get_args

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score, log_loss

from tasks.scores.metric_names import AUTO, KNOWN, MetricName, ordered_classes_problem
from tasks.scores.metrics import PRIMARY_METRIC, compute_metrics, higher_is_better, resampled_scores, score


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


# --- evaluate.metric: the metrics a user can choose --------------------------------------


def _multiclass_case() -> tuple[np.ndarray, np.ndarray]:
    """Five ordered classes, an imbalanced truth and a model that is often one class off."""
    rng = np.random.default_rng(0)
    y = rng.choice(5, size=200, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    guess = np.clip(y + rng.choice([-1, 0, 0, 1], size=200), 0, 4)
    prob = np.full((200, 5), 0.05)
    prob[np.arange(200), guess] = 0.8
    return y, prob


def test_added_decision_metrics_equal_scikit_learns() -> None:
    y, prob = _multiclass_case()
    predicted = prob.argmax(axis=1)
    expected = {
        "balanced_accuracy": balanced_accuracy_score(y, predicted),
        "f1_macro": f1_score(y, predicted, average="macro"),
        "f1_weighted": f1_score(y, predicted, average="weighted"),
        "quadratic_kappa": cohen_kappa_score(y, predicted, weights="quadratic"),
        "log_loss": log_loss(y, prob, labels=range(5)),
    }
    for metric, value in expected.items():
        assert score("multiclass", metric, y, prob) == pytest.approx(value), metric


def test_binary_metrics_from_the_confusion_matrix_equal_scikit_learns() -> None:
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 0], dtype=np.float32)
    prob = np.array([0.1, 0.2, 0.7, 0.3, 0.4, 0.1, 0.9, 0.4, 0.8, 0.6], dtype=np.float32)
    predicted = (prob >= 0.5).astype(int)
    assert score("binary", "balanced_accuracy", y, prob) == pytest.approx(
        balanced_accuracy_score(y, predicted)
    )
    assert score("binary", "f1_macro", y, prob) == pytest.approx(f1_score(y, predicted, average="macro"))
    assert score("binary", "log_loss", y, prob) == pytest.approx(
        compute_metrics("binary", y, prob)["log_loss"]
    )


def test_regression_scores_equal_compute_metrics() -> None:
    y, pred = np.array([1.0, 2.0, 4.0, 8.0]), np.array([1.5, 2.0, 3.0, 9.0])
    every = compute_metrics("regression", y, pred)
    for metric in ("rmse", "mae", "r2"):
        assert score("regression", metric, y, pred) == pytest.approx(every[metric]), metric


def test_the_chosen_metric_joins_a_tasks_metrics_and_only_then() -> None:
    y, prob = _multiclass_case()
    assert "quadratic_kappa" not in compute_metrics("multiclass", y, prob)
    chosen = compute_metrics("multiclass", y, prob, "quadratic_kappa")
    assert chosen["quadratic_kappa"] == pytest.approx(score("multiclass", "quadratic_kappa", y, prob))
    assert higher_is_better("quadratic_kappa") and higher_is_better("balanced_accuracy")


def test_a_metric_the_task_lacks_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'rmse' does not score a 'binary' task"):
        score("binary", "rmse", np.array([0, 1]), np.array([0.2, 0.7]))


def test_kappa_of_one_class_everywhere_is_undefined_not_a_crash() -> None:
    prob = np.tile([0.9, 0.05, 0.05], (4, 1))
    assert math.isnan(score("multiclass", "quadratic_kappa", np.zeros(4, dtype=int), prob))


def test_every_name_the_config_accepts_is_a_metric_of_some_task() -> None:
    assert set(get_args(MetricName)) == KNOWN | {AUTO}


def test_quadratic_kappa_needs_classes_that_are_numbers() -> None:
    assert ordered_classes_problem("quadratic_kappa", ("1", "2", "10")) is None
    problem = ordered_classes_problem("quadratic_kappa", ("cat", "dog", "3"))
    assert problem is not None and "'cat', 'dog'" in problem and "\n" not in problem
    assert ordered_classes_problem("f1_macro", ("cat", "dog")) is None


def test_resampled_binary_auc_equals_the_rank_auc_of_each_resample() -> None:
    """The weighted one-pass AUC the bootstrap uses is the per-resample rank AUC, ties and all."""
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 2, size=120)
    prob = np.round(rng.random(120), 1)  # few distinct values: many ties, within and across classes
    rows = [rng.integers(0, 120, size=120) for _ in range(200)]
    rows.append(np.flatnonzero(y_true == 1)[:10])  # one class only: undefined
    fast = resampled_scores("binary", "auc", y_true, prob, rows)
    slow = np.array([score("binary", "auc", y_true[r], prob[r]) for r in rows])
    assert np.isnan(fast[-1]) and np.isnan(slow[-1])
    np.testing.assert_allclose(fast[:-1], slow[:-1], rtol=0, atol=1e-12)
    assert len(set(np.round(fast[:-1], 6))) > 50  # the resamples really differ


def test_resampled_scores_of_other_metrics_score_each_resample() -> None:
    rng = np.random.default_rng(6)
    y_true = rng.integers(0, 3, size=60)
    prob = rng.dirichlet(np.ones(3), size=60)
    rows = [rng.integers(0, 60, size=60) for _ in range(5)]
    expected = [score("multiclass", "log_loss", y_true[r], prob[r]) for r in rows]
    assert resampled_scores("multiclass", "log_loss", y_true, prob, rows).tolist() == expected
