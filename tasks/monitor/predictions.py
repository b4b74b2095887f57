"""Drift of the model's output: the share of each predicted class, and the distribution of its scores.

Inputs can shift in ways the model ignores, and shift in ways no single column shows; the
output is where both meet. The reference side is the model's predictions on rows it was
not fitted on (val and test): on its own train rows a model is more confident than on any
new row, so comparing with those would report drift for a fresh sample of the same data.
"""

from __future__ import annotations

import numpy as np

from tasks.config import DriftThresholds
from tasks.monitor.checks import PREDICTION, Check, judge
from tasks.monitor.statistics import categorical_drift, numeric_drift


def prediction_checks(
    task: str, classes: list[str], reference: np.ndarray, batch: np.ndarray, thresholds: DriftThresholds
) -> list[Check]:
    """Predicted classes (classification) and scores, as the served model outputs them.

    The score is the positive class's probability (binary), the top probability, i.e. the
    model's confidence (multiclass, multilabel), or the predicted value (regression).
    """
    checks = []
    if task != "regression":
        comparison = categorical_drift(_classes(task, classes, reference), _classes(task, classes, batch))
        checks.append(judge(PREDICTION, PREDICTION, "predicted class", comparison, thresholds))
    comparison = numeric_drift(_score(reference), _score(batch))
    checks.append(judge(PREDICTION, PREDICTION, "score", comparison, thresholds))
    return checks


def _classes(task: str, classes: list[str], predictions: np.ndarray) -> list[str]:
    """One label per row (binary, multiclass); one per predicted label (multilabel)."""
    labels = np.asarray(classes, dtype=object)
    if task == "binary":
        return [str(c) for c in labels[(predictions >= 0.5).astype(int)]]
    if task == "multiclass":
        return [str(c) for c in labels[predictions.argmax(axis=1)]]
    return [str(labels[i]) for row in predictions for i in np.flatnonzero(row >= 0.5)]


def _score(predictions: np.ndarray) -> np.ndarray:
    return predictions.max(axis=1) if predictions.ndim == 2 else predictions
