"""Greedy ensemble selection with replacement (Caruana et al., 2004), on validation rows only.

Each round adds the member whose inclusion scores best on val; a member may be added again,
which is how weights other than 1/k arise. The ensemble is the weighted average of the
members' predictions (probabilities, or values for regression), so it needs no training of
its own and can never be worse on val than the best single member it starts from.
The metric is `evaluate.metric` (the task's default under `auto`). Ties in it (frequent for
accuracy on a few hundred rows) go to the smaller log loss (or squared error), so the choice
does not hang on the order of the members; where it is undefined on val (AUC with one class
present), every candidate ties and the smooth loss alone decides.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from tasks.scores.metrics import higher_is_better, resolve_metric, score

ROUNDS = 25  # Caruana's runs plateau well before this on a handful of members
_EPS = 1e-7


@dataclass(frozen=True)
class Ensemble:
    """Members with positive weights (summing to 1) and how the choice was made."""

    weights: dict[str, float]
    val_score: float
    metric: str
    member_val: dict[str, float] = field(default_factory=dict)  # each member alone on val
    trace: list[dict[str, float]] = field(default_factory=list)  # val score after each round

    def to_json(self) -> dict:
        return {
            "members": dict(sorted(self.weights.items())),
            "val": self.val_score,
            "selected_by": f"val {self.metric}",
            "member_val": dict(sorted(self.member_val.items())),
            "method": "greedy selection with replacement (Caruana et al. 2004)",
            "rounds": len(self.trace),
        }


def blend(predictions: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """The weighted average of the members' predictions (same shape as each)."""
    total = sum(weights.values())
    return sum(predictions[name] * (weight / total) for name, weight in sorted(weights.items()))  # type: ignore[return-value]


def select_ensemble(
    task: str,
    y_val: np.ndarray,
    val_predictions: Mapping[str, np.ndarray],
    rounds: int = ROUNDS,
    metric: str | None = None,
) -> Ensemble:
    """Pick members and weights that do best on val by `metric` (None: the task's default)."""
    if not val_predictions:
        raise ValueError("ensemble selection needs at least one member")
    metric = resolve_metric(task, metric)
    names = sorted(val_predictions)
    member_val = {n: score(task, metric, y_val, val_predictions[n]) for n in names}
    counts: Counter[str] = Counter()
    total: np.ndarray | None = None
    best: tuple[tuple[float, float], Counter[str]] | None = None
    trace: list[dict[str, float]] = []
    for round_number in range(1, rounds + 1):
        scored = []
        for name in names:
            candidate = val_predictions[name] if total is None else total + val_predictions[name]
            scored.append((_key(task, metric, y_val, candidate / round_number), name))
        key, chosen = max(scored, key=lambda item: item[0])  # max is stable: ties keep the first name
        counts[chosen] += 1
        total = (
            val_predictions[chosen].astype(np.float64) if total is None else total + val_predictions[chosen]
        )
        trace.append({"round": round_number, "val": _signed(metric, key[0])})
        if best is None or key > best[0]:
            best = (key, counts.copy())
    assert best is not None
    key, chosen_counts = best
    size = sum(chosen_counts.values())
    weights = {name: count / size for name, count in sorted(chosen_counts.items())}
    return Ensemble(weights, _signed(metric, key[0]), metric, member_val, trace)


def _key(task: str, metric: str, y: np.ndarray, prediction: np.ndarray) -> tuple[float, float]:
    """(signed metric, minus the smooth loss): larger is better in both places."""
    value = score(task, metric, y, prediction)
    if not np.isfinite(value):
        value = -np.inf if higher_is_better(metric) else np.inf
    return _signed(metric, float(value)), -_smooth_loss(task, y, prediction)


def _signed(metric: str, value: float) -> float:
    return value if higher_is_better(metric) else -value


def _smooth_loss(task: str, y: np.ndarray, prediction: np.ndarray) -> float:
    """Log loss for probabilities, mean squared error for values."""
    p = np.asarray(prediction, dtype=np.float64)
    y = np.asarray(y)
    if task == "regression":
        return float(np.mean((p - y.astype(np.float64)) ** 2))
    if task == "multiclass":
        picked = p[np.arange(len(y)), y.astype(int)]
        return float(-np.mean(np.log(np.clip(picked, _EPS, 1.0))))
    p = np.clip(p, _EPS, 1 - _EPS)  # binary (N,) or multilabel (N, C)
    y = y.astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
