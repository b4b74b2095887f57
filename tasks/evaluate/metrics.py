"""Evaluation metrics per task, computed with scikit-learn.

One function for all tasks so that reports, model selection and the tests agree on exactly
which numbers describe a model.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

PRIMARY_METRIC: dict[str, str] = {
    "binary": "auc",
    "multiclass": "accuracy",
    "multilabel": "f1_micro",
    "regression": "rmse",
}

# Error-like metrics; every other metric we report is a score where larger is better.
_LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae", "hamming_loss"})
_KNOWN = frozenset(
    {
        "auc", "accuracy", "f1", "f1_macro", "f1_weighted", "log_loss", "rmse", "mae", "r2",
        "f1_micro", "auc_macro", "subset_accuracy", "hamming_loss",
    }
)  # fmt: skip


def higher_is_better(metric: str) -> bool:
    """Direction of a metric, so model selection never compares an error as if it were a score."""
    if metric not in _KNOWN:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(sorted(_KNOWN))}")
    return metric not in _LOWER_IS_BETTER


def compute_metrics(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """All metrics of a task.

    y_pred is what `tasks.train.training.predict` returns: P(class 1) (N,) for binary,
    probabilities (N, C) for multiclass, values (N,) for regression, and for multilabel
    independent probabilities (N, C) against a 0/1 y_true (N, C).
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} rows but y_pred has {len(y_pred)}")
    if task == "binary":
        return _binary(y_true, y_pred)
    if task == "multiclass":
        return _multiclass(y_true, y_pred)
    if task == "multilabel":
        return _multilabel(y_true, y_pred)
    if task == "regression":
        return _regression(y_true, y_pred)
    raise ValueError(f"unknown task {task!r}; expected binary, multiclass, multilabel or regression")


def _binary(y_true: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    labels = y_true.astype(np.int64)
    predicted = (prob >= 0.5).astype(np.int64)
    return {
        "auc": _auc(labels, prob),
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "log_loss": float(log_loss(labels, prob, labels=[0, 1])),
    }


def _auc(labels: np.ndarray, prob: np.ndarray) -> float:
    # AUC is undefined when the split holds one class only (small test sets); report NaN
    # rather than crash the evaluation of every other metric.
    if np.unique(labels).size < 2:
        return math.nan
    return float(roc_auc_score(labels, prob))


def _multiclass(y_true: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    if prob.ndim != 2:
        raise ValueError(f"multiclass y_pred must be (N, C) probabilities, got shape {prob.shape}")
    labels = y_true.astype(np.int64)
    predicted = prob.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1_macro": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(labels, predicted, average="weighted", zero_division=0)),
        "log_loss": float(log_loss(labels, prob, labels=list(range(prob.shape[1])))),
    }


def _multilabel(y_true: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    if prob.ndim != 2 or y_true.shape != prob.shape:
        raise ValueError(
            f"multilabel y_true and y_pred must both be (N, C), got {y_true.shape} and {prob.shape}"
        )
    labels = y_true.astype(np.int64)
    predicted = (prob >= 0.5).astype(np.int64)
    clipped = np.clip(prob.astype(np.float64), 1e-7, 1 - 1e-7)
    bce = -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    return {
        "f1_micro": float(f1_score(labels, predicted, average="micro", zero_division=0)),
        "f1_macro": _macro_f1(labels, predicted),
        "auc_macro": _macro_auc(labels, prob),
        "subset_accuracy": float(np.mean((labels == predicted).all(axis=1))) if len(labels) else math.nan,
        "hamming_loss": float(np.mean(labels != predicted)) if labels.size else math.nan,
        "log_loss": float(bce.mean()) if bce.size else math.nan,
    }


def _macro_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean F1 over the labels that occur in these rows.

    A label no test row has, and that the model rightly never predicts, has no F1 at all;
    counting it as 0 (sklearn's zero_division) would punish a perfect model for the split.
    False positives of such a label still cost f1_micro and hamming_loss.
    """
    occurring = np.flatnonzero(labels.sum(axis=0) > 0)
    if not len(occurring):
        return math.nan
    return float(f1_score(labels, predicted, average="macro", labels=occurring, zero_division=0))


def _macro_auc(labels: np.ndarray, prob: np.ndarray) -> float:
    """Mean AUC over the labels that occur both present and absent (others are undefined)."""
    aucs = [_auc(labels[:, c], prob[:, c]) for c in range(labels.shape[1])]
    defined = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(defined)) if defined else math.nan


def _regression(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    y_true = y_true.astype(np.float64)
    y_pred = y_pred.astype(np.float64)
    return {
        "rmse": float(math.sqrt(mean_squared_error(y_true, y_pred))),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)),
    }
