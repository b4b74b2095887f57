"""Which metrics exist, which fit each task, and which way is better: names only, no numbers.

Kept apart from tasks/scores/metrics.py (which imports scikit-learn) so that loading
params.yaml can check `evaluate.metric` against the task without paying for that import.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

# `evaluate.metric`: what every choice is made on (early stopping, the best epoch, the ensemble,
# the scikit-learn baseline's tuning, promotion, the report's headline). `auto` keeps the
# per-task default below and, in the training loops, early stopping on val loss.
MetricName = Literal[
    "auto", "accuracy", "balanced_accuracy", "f1", "f1_macro", "f1_weighted", "f1_micro",
    "quadratic_kappa", "auc", "auc_macro", "log_loss", "subset_accuracy", "hamming_loss",
    "rmse", "mae", "r2",
]  # fmt: skip
AUTO = "auto"

PRIMARY_METRIC: dict[str, str] = {
    "binary": "auc",
    "multiclass": "accuracy",
    "multilabel": "f1_micro",
    "regression": "rmse",
}

# The metrics each task can be scored (and selected) on; the default first.
METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auc", "accuracy", "balanced_accuracy", "f1", "f1_macro", "f1_weighted", "log_loss"),
    "multiclass": ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "quadratic_kappa", "log_loss"),
    "multilabel": ("f1_micro", "f1_macro", "auc_macro", "subset_accuracy", "hamming_loss", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}

# Error-like metrics; every other metric we report is a score where larger is better.
_LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae", "hamming_loss"})
KNOWN = frozenset(name for names in METRICS.values() for name in names)


def higher_is_better(metric: str) -> bool:
    """Direction of a metric, so model selection never compares an error as if it were a score."""
    if metric not in KNOWN:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(sorted(KNOWN))}")
    return metric not in _LOWER_IS_BETTER


def resolve_metric(task: str, chosen: str | None = AUTO) -> str:
    """The metric a selection uses: `chosen`, or the task's default for `auto` (and None)."""
    if chosen is None or chosen == AUTO:
        return PRIMARY_METRIC[task]
    problem = metric_problem(task, chosen)
    if problem is not None:
        raise ValueError(problem)
    return chosen


def metric_problem(task: str, metric: str) -> str | None:
    """Why `metric` cannot score a `task` model, in words; None when it can."""
    if metric == AUTO or metric in METRICS.get(task, ()):
        return None
    return f"{metric!r} does not fit a {task} task; choose one of {', '.join((AUTO, *METRICS[task]))}"


def ordered_classes_problem(metric: str, classes: Iterable[str]) -> str | None:
    """quadratic_kappa weighs a miss by the distance between classes, so they must be numbers.

    Classes that are all numbers are sorted numerically (tasks/train/assemble.py), which is the
    order the class indices the kappa reads follow. None when the metric can use these classes.
    """
    if metric != "quadratic_kappa":
        return None
    words = [c for c in classes if not _is_number(c)]
    if not words:
        return None
    shown = ", ".join(repr(w) for w in words[:3])
    return (
        f"quadratic_kappa needs ordered classes (numbers), but the target's classes include {shown}; "
        "choose f1_macro or balanced_accuracy instead, or encode the target as numbers"
    )


def _is_number(label: str) -> bool:
    try:
        float(label)
    except ValueError:
        return False
    return True
