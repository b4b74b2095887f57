"""Greedy ensemble selection with replacement (Caruana et al., 2004), on validation rows only.

Each round adds the member whose inclusion scores best on val; a member may be added again,
which is how weights other than 1/k arise. The ensemble is the weighted average of the
members' predictions (probabilities, or values for regression), so it needs no training of
its own and can never be worse on val than the best single member it starts from.
The metric is `evaluate.metric` (the task's default under `auto`). Ties in it (frequent for
accuracy on a few hundred rows) go to the smaller log loss (or squared error), so the choice
does not hang on the order of the members; where it is undefined on val (AUC with one class
present), every candidate ties and the smooth loss alone decides.

The weights are the mean of the selection run on `BAGS` bootstrap resamples of the val rows
(bagged ensemble selection). One greedy run on a few hundred val rows swung the boosted
member's weight between 0.29 and 0.63 from one weekly retrain to the next as 5 % rows were
added, moving the ensemble as much as a real change would and leaving a promotion gate to
guess; averaged over resamples, the weights move smoothly with the rows. Should the mean
score below the best single member on val, that member alone is the ensemble, so the
choice is never worse on val than its best member.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from tasks.scores.metrics import higher_is_better, resolve_metric, score

ROUNDS = 25  # Caruana's runs plateau well before this on a handful of members
BAGS = 16  # bootstrap resamples of val whose selections are averaged (see the module docstring)
# Rows scored over all resamples, at most: the fewer the val rows, the noisier one greedy run,
# so small val sets get every bag and 20,000 rows get 4 (2 s of 7 members), not 16 (7 s).
BAG_ROWS = 80_000
MIN_WEIGHT = 0.02  # a member weighed less changes a prediction by less than its noise, yet costs its forward
_SEED = 0
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
            "method": "greedy selection with replacement (Caruana et al. 2004), bagged over val resamples",
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
    bags: int = BAGS,
) -> Ensemble:
    """Pick members and weights that do best on val by `metric` (None: the task's default),
    averaged over `bags` bootstrap resamples of the val rows (1: one greedy run on all of them)."""
    if not val_predictions:
        raise ValueError("ensemble selection needs at least one member")
    metric = resolve_metric(task, metric)
    names = sorted(val_predictions)
    member_val = member_scores(task, metric, y_val, val_predictions)
    y_val = np.asarray(y_val)
    counts, trace = _greedy(task, metric, y_val, val_predictions, names, rounds)
    weights = _normalised(counts)
    bags = min(bags, math.ceil(BAG_ROWS / max(len(y_val), 1)))
    if bags > 1 and len(names) > 1:
        rng = np.random.default_rng(_SEED)
        total: Counter[str] = Counter()
        for _ in range(bags):
            rows = rng.integers(0, len(y_val), size=len(y_val))
            drawn = {name: val_predictions[name][rows] for name in names}
            bag_counts, _ = _greedy(task, metric, y_val[rows], drawn, names, rounds)
            total.update(_normalised(bag_counts))
        weights = _normalised(Counter({n: w for n, w in total.items() if w / bags >= MIN_WEIGHT}))
        best_member = max(names, key=lambda n: selection_key(task, metric, y_val, val_predictions[n]))
        if selection_key(task, metric, y_val, blend(val_predictions, weights)) < selection_key(
            task, metric, y_val, val_predictions[best_member]
        ):
            weights = {best_member: 1.0}
    value = selection_key(task, metric, y_val, blend(val_predictions, weights))[0]
    return Ensemble(weights, signed_score(metric, value), metric, member_val, trace)


def member_scores(
    task: str, metric: str, y_val: np.ndarray, val_predictions: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Each member alone on val by `metric`: ensemble.json's `member_val`."""
    return {name: score(task, metric, y_val, val_predictions[name]) for name in sorted(val_predictions)}


def _greedy(
    task: str,
    metric: str,
    y_val: np.ndarray,
    val_predictions: Mapping[str, np.ndarray],
    names: list[str],
    rounds: int,
) -> tuple[Counter[str], list[dict[str, float]]]:
    """Caruana's greedy selection with replacement: how often each member was added in its best
    round, and the val score after each round."""
    counts: Counter[str] = Counter()
    total: np.ndarray | None = None
    best: tuple[tuple[float, float], Counter[str]] | None = None
    trace: list[dict[str, float]] = []
    for round_number in range(1, rounds + 1):
        scored = []
        for name in names:
            candidate = val_predictions[name] if total is None else total + val_predictions[name]
            scored.append((selection_key(task, metric, y_val, candidate / round_number), name))
        key, chosen = max(scored, key=lambda item: item[0])  # max is stable: ties keep the first name
        counts[chosen] += 1
        total = (
            val_predictions[chosen].astype(np.float64) if total is None else total + val_predictions[chosen]
        )
        trace.append({"round": round_number, "val": signed_score(metric, key[0])})
        if best is None or key > best[0]:
            best = (key, counts.copy())
    assert best is not None
    return best[1], trace


def _normalised(counts: Mapping[str, float]) -> dict[str, float]:
    """Weights summing to 1, in name order."""
    size = sum(counts.values())
    return {name: count / size for name, count in sorted(counts.items())}


def selection_key(task: str, metric: str, y: np.ndarray, prediction: np.ndarray) -> tuple[float, float]:
    """(signed metric, minus the smooth loss): larger is better in both places."""
    value = score(task, metric, y, prediction)
    if not np.isfinite(value):
        value = -np.inf if higher_is_better(metric) else np.inf
    return signed_score(metric, float(value)), -_smooth_loss(task, y, prediction)


def signed_score(metric: str, value: float) -> float:
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
