"""Evaluation metrics per task, computed with scikit-learn and numpy.

One module for all tasks so that reports, model selection and the tests agree on exactly
which numbers describe a model. `compute_metrics` gives every metric of a task (the report);
`score` one metric alone, cheaply enough for a thousand bootstrap resamples or a check after
every epoch (selection). The metrics scikit-learn has always computed here keep computing
them; those added for `evaluate.metric` (balanced accuracy, macro and weighted F1 for binary,
quadratic kappa) are numpy over the confusion matrix, held to scikit-learn's values by tests.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from tasks.scores.metric_names import METRICS, PRIMARY_METRIC, higher_is_better, resolve_metric

__all__ = ["METRICS", "PRIMARY_METRIC", "compute_metrics", "higher_is_better", "resolve_metric", "score"]


def compute_metrics(
    task: str, y_true: np.ndarray, y_pred: np.ndarray, metric: str | None = None
) -> dict[str, float]:
    """All metrics of a task, and `metric` (`evaluate.metric`) too when the task's set lacks it.

    y_pred is what `tasks.train.training.predict` returns: P(class 1) (N,) for binary,
    probabilities (N, C) for multiclass, values (N,) for regression, and for multilabel
    independent probabilities (N, C) against a 0/1 y_true (N, C).
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} rows but y_pred has {len(y_pred)}")
    if task == "binary":
        values = _binary(y_true, y_pred)
    elif task == "multiclass":
        values = _multiclass(y_true, y_pred)
    elif task == "multilabel":
        values = _multilabel(y_true, y_pred)
    elif task == "regression":
        values = _regression(y_true, y_pred)
    else:
        raise ValueError(f"unknown task {task!r}; expected binary, multiclass, multilabel or regression")
    if metric is not None and metric not in values:
        values[metric] = score(task, metric, y_true, y_pred)
    return values


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
    prob = _rows_sum_to_one(prob)
    labels = y_true.astype(np.int64)
    predicted = prob.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1_macro": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(labels, predicted, average="weighted", zero_division=0)),
        "log_loss": float(log_loss(labels, prob, labels=list(range(prob.shape[1])))),
    }


def _rows_sum_to_one(prob: np.ndarray) -> np.ndarray:
    """(N, C) probabilities with each row divided, in float64, by its sum; in their own float type.

    A float32 softmax (or an average of them) sums to 1 only within float32's rounding,
    about 1e-7; once cast to float64, scikit-learn's log_loss checks the sums at float64's
    tolerance (1.5e-8) and warns on every run. float32 input stays float32, so log_loss
    clips it as before. An all-zero row is left as it is.
    """
    dtype = prob.dtype if np.issubdtype(prob.dtype, np.floating) else np.dtype(np.float64)
    wide = prob.astype(np.float64)
    sums = wide.sum(axis=1, keepdims=True)
    return np.divide(wide, sums, out=wide, where=sums > 0).astype(dtype, copy=False)


def _multilabel(y_true: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    labels, predicted = _multilabel_decisions(y_true, prob)
    return {
        "f1_micro": float(f1_score(labels, predicted, average="micro", zero_division=0)),
        "f1_macro": _macro_f1(labels, predicted),
        "auc_macro": _macro_auc(labels, prob),
        "subset_accuracy": _subset_accuracy(labels, predicted),
        "hamming_loss": _hamming_loss(labels, predicted),
        "log_loss": _multilabel_log_loss(labels, prob),
    }


def _multilabel_decisions(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted): both (N, C) 0/1 int64, a label predicted at probability 0.5 or more."""
    if prob.ndim != 2 or y_true.shape != prob.shape:
        raise ValueError(
            f"multilabel y_true and y_pred must both be (N, C), got {y_true.shape} and {prob.shape}"
        )
    return y_true.astype(np.int64), (prob >= 0.5).astype(np.int64)


def _subset_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean((labels == predicted).all(axis=1))) if len(labels) else math.nan


def _hamming_loss(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(labels != predicted)) if labels.size else math.nan


def _multilabel_log_loss(labels: np.ndarray, prob: np.ndarray) -> float:
    clipped = np.clip(prob.astype(np.float64), 1e-7, 1 - 1e-7)
    bce = -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    return float(bce.mean()) if bce.size else math.nan


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


# --- one metric, cheaply: what selection and the bootstrap call -------------------------


def score(task: str, metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """One metric of `task`, equal to compute_metrics' value of that name, at a fraction of its cost.

    NaN where the metric is undefined on these rows (AUC on one class, R² on one row); callers
    that select skip or rank such values last. Raises ValueError for a metric the task lacks.
    """
    if metric not in METRICS.get(task, ()):
        known = ", ".join(METRICS.get(task, ())) or "none (unknown task)"
        raise ValueError(f"{metric!r} does not score a {task!r} task; its metrics: {known}")
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if task == "regression":
        return _regression_score(metric, y_true, y_pred)
    if task == "multilabel":
        return _multilabel_score(metric, y_true, y_pred)
    if metric == "auc":
        return _rank_auc(y_true, y_pred)
    if metric == "log_loss":
        return _log_loss(task, y_true, y_pred)
    if metric == "accuracy" and task == "multiclass":
        return float(np.mean(y_pred.argmax(axis=1) == y_true))
    return from_confusion(metric, confusion(task, y_true, y_pred))


def _rank_auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """AUC as the Mann-Whitney rank statistic (ties averaged): roc_auc_score without its overhead."""
    labels = y_true.astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(prob)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def resampled_scores(
    task: str, metric: str, y_true: np.ndarray, y_pred: np.ndarray, rows: list[np.ndarray]
) -> np.ndarray:
    """`score` on each resample (`rows`: the indices it drew), as one array.

    A binary AUC, the bootstrap's usual case, is computed for all resamples at once: a
    resample is the full table weighted by how often it drew each row, and the
    Mann-Whitney statistic of weighted rows needs one sort for every resample instead of a
    rank per resample (a thousand resamples of 250 rows: 0.03 s instead of 2 s). The value
    equals `score`'s up to float rounding.
    """
    if task == "binary" and metric == "auc" and rows:
        counts = np.stack([np.bincount(drawn, minlength=len(y_true)) for drawn in rows]).astype(np.float64)
        return _weighted_auc(np.asarray(y_true).astype(bool), np.asarray(y_pred), counts)
    return np.array([score(task, metric, y_true[drawn], y_pred[drawn]) for drawn in rows], dtype=np.float64)


def _weighted_auc(labels: np.ndarray, prob: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUC per row of `counts` (R, n): P(positive scores above negative), ties counting half."""
    _, group = np.unique(prob, return_inverse=True)  # equal scores share a group: the ties
    n_groups, resamples = int(group.max()) + 1, counts.shape[0]
    slots = np.arange(resamples)[:, None] * n_groups + group[None, :]  # (R, n): resample x group

    def per_group(mask: np.ndarray) -> np.ndarray:
        weights = np.bincount(slots[:, mask].ravel(), counts[:, mask].ravel(), resamples * n_groups)
        return weights.reshape(resamples, n_groups)  # (R, G), groups in increasing score

    positive, negative = per_group(labels), per_group(~labels)
    below = np.cumsum(negative, axis=1) - negative  # negatives scored under each group
    n_pos, n_neg = positive.sum(axis=1), negative.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (positive * (below + 0.5 * negative)).sum(axis=1) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def _log_loss(task: str, y_true: np.ndarray, prob: np.ndarray) -> float:
    """Mean negative log probability of the true class, clipped as scikit-learn clips it."""
    prob = prob if np.issubdtype(prob.dtype, np.floating) else prob.astype(np.float64)
    labels = y_true.astype(np.int64)
    if task == "binary":
        picked = np.where(labels == 1, prob, 1 - prob)
    else:
        picked = prob[np.arange(len(labels)), labels]
    if not len(picked):
        return math.nan
    eps = np.finfo(prob.dtype).eps
    return float(-np.mean(np.log(np.clip(picked, eps, 1 - eps).astype(np.float64))))


def confusion(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """(C, C) counts, rows the true class and columns the predicted one (0.5 threshold or argmax)."""
    if task == "binary":
        n_classes, predicted = 2, (np.asarray(y_pred) >= 0.5).astype(np.int64)
    else:
        n_classes, predicted = y_pred.shape[1], np.asarray(y_pred).argmax(axis=1)
    cells = np.asarray(y_true).astype(np.int64) * n_classes + predicted
    counts = np.bincount(cells, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.float64)


def from_confusion(metric: str, counts: np.ndarray) -> float:
    """A decision metric from (C, C) counts (truth x predicted); expected counts work alike (CBPE).

    F1 and balanced accuracy follow scikit-learn: macro F1 averages the classes that occur in
    truth or prediction, balanced accuracy the recall of the classes that occur in truth, and
    an F1 with nothing to count is 0 (its zero_division=0). Quadratic kappa weighs a miss by
    the squared distance between class indices (cohen_kappa_score(weights="quadratic")).
    """
    total = counts.sum()
    if total <= 0:
        return math.nan
    hits, truth, predicted = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    if metric == "accuracy":
        return float(hits.sum() / total)
    if metric == "balanced_accuracy":
        seen = truth > 0
        return float(np.mean(hits[seen] / truth[seen]))
    if metric == "quadratic_kappa":
        return _quadratic_kappa(counts, truth, predicted)
    denominator = truth + predicted  # 2 TP + FP + FN, per class
    f1 = np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=denominator > 0)
    if metric == "f1":
        return float(f1[1])
    if metric == "f1_macro":
        return float(np.mean(f1[denominator > 0]))
    if metric == "f1_weighted":
        return float(np.sum(f1 * truth) / truth.sum())
    raise ValueError(f"{metric!r} is not a decision metric")


def _quadratic_kappa(counts: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> float:
    index = np.arange(len(counts))
    weights = (index[:, None] - index[None, :]) ** 2.0  # (C, C)
    expected = np.outer(truth, predicted) / counts.sum()  # what chance agreement would count
    disagreement = float(np.sum(weights * expected))
    if disagreement == 0:
        return math.nan  # every row one class, in truth and prediction: kappa is undefined
    return 1.0 - float(np.sum(weights * counts)) / disagreement


def _regression_score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if not len(y_true):
        return math.nan
    error = y_pred.astype(np.float64) - y_true.astype(np.float64)
    if metric == "rmse":
        return float(np.sqrt(np.mean(error**2)))
    if metric == "mae":
        return float(np.mean(np.abs(error)))
    if len(y_true) < 2:
        return math.nan  # R² of one row is undefined (scikit-learn warns and says NaN)
    truth = y_true.astype(np.float64)
    residual, spread = float(np.sum(error**2)), float(np.sum((truth - truth.mean()) ** 2))
    if spread == 0:  # a constant target: scikit-learn's force_finite convention
        return 1.0 if residual == 0 else 0.0
    return 1.0 - residual / spread


def _multilabel_score(metric: str, y_true: np.ndarray, prob: np.ndarray) -> float:
    if metric == "f1_micro":  # from pooled counts
        labels, predicted = y_true >= 0.5, prob >= 0.5
        tp, wrong = np.sum(labels & predicted), np.sum(labels != predicted)
        return float(2 * tp / (2 * tp + wrong)) if tp + wrong else 0.0
    labels, predicted = _multilabel_decisions(y_true, prob)
    if metric == "f1_macro":
        return _macro_f1(labels, predicted)
    if metric == "auc_macro":
        return _macro_auc(labels, prob)
    if metric == "subset_accuracy":
        return _subset_accuracy(labels, predicted)
    if metric == "hamming_loss":
        return _hamming_loss(labels, predicted)
    return _multilabel_log_loss(labels, prob)
