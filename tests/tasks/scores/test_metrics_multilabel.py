"""Multilabel metrics: micro/macro F1, per-label AUC, exact-match and Hamming."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.scores.metrics import PRIMARY_METRIC, compute_metrics, higher_is_better

TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])


def test_f1_macro_averages_over_the_labels_that_occur_in_test() -> None:
    """A label absent from these rows and never predicted has no F1; it must not count as 0."""
    y_true = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    prob = y_true.astype(float)  # perfect, and label 2 never predicted
    assert compute_metrics("multilabel", y_true, prob)["f1_macro"] == pytest.approx(1.0)


def test_multilabel_keys_and_primary_metric() -> None:
    metrics = compute_metrics("multilabel", TRUE, np.full(TRUE.shape, 0.5))
    expected = {"f1_micro", "f1_macro", "auc_macro", "subset_accuracy", "hamming_loss", "log_loss"}
    assert set(metrics) == expected
    assert PRIMARY_METRIC["multilabel"] == "f1_micro" and higher_is_better("f1_micro")
    assert not higher_is_better("hamming_loss")


def test_perfect_multilabel_predictions() -> None:
    metrics = compute_metrics("multilabel", TRUE, TRUE * 0.9 + 0.05)
    assert metrics["f1_micro"] == pytest.approx(1.0)
    assert metrics["subset_accuracy"] == pytest.approx(1.0)
    assert metrics["hamming_loss"] == 0.0
    assert metrics["auc_macro"] == pytest.approx(1.0)


def test_one_wrong_label_costs_one_cell_of_hamming_and_one_row_of_subset_accuracy() -> None:
    prob = TRUE * 0.9 + 0.05
    prob[0, 1] = 0.9  # an extra label on row 0
    metrics = compute_metrics("multilabel", TRUE, prob)
    assert metrics["hamming_loss"] == pytest.approx(1 / 12)
    assert metrics["subset_accuracy"] == pytest.approx(3 / 4)


def test_multilabel_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="multilabel"):
        compute_metrics("multilabel", TRUE, np.full((4, 2), 0.5))
