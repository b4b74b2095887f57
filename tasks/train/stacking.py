"""Stacking beside Caruana's selection: a pooled combiner learned on val, kept only where it wins.

The stacker is a log-linear pool with a bias per class. For classification

    logits = sum_m w_m * log p_m + b        (w_m >= 0; binary p_m becomes [1 - p, p])

and for regression `value = sum_m w_m * y_m + b`. It is a weighted average of the members on
the log scale (Caruana's blend averages probabilities), whose total weight acts as a
temperature and whose biases correct the class priors the members share. It has one weight
per member and one bias per class (M + C numbers), not the M x C x C of a logistic
regression on every member's every class: fitted on a few hundred val rows, the full
regression lost 1.7-7.5 points of test accuracy on PetFinder and pokemon, where this form
stays within noise of the selection. The loss is convex in (w, b) and ridge-penalised
towards equal weights and no bias, so its fit is unique and moves smoothly as weekly drops
add rows (the bagged selection was built for the same reason). Members whose weight fits to
zero drop out and are never loaded by prediction.

`combine(..., mode="auto")` chooses between the two by their out-of-fold score on val: both
are fitted on four fifths of the val rows and scored on the fifth they did not see, five
times, so neither is credited for fitting the rows it is scored on. Caruana keeps ties.
Multilabel targets keep Caruana's selection (each label would need its own pool).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from tasks.scores.metrics import resolve_metric, score
from tasks.train.ensemble import blend, member_scores, select_ensemble, selection_key, signed_score

Combine = Literal["caruana", "stacking", "auto"]
TASKS = ("binary", "multiclass", "regression")
FOLDS = 5
RIDGE = 1.0  # penalty (per val row) pulling the weights to 1/M and the biases to 0
MIN_ROWS = 2 * FOLDS  # fewer val rows cannot be split into folds that each hold a row to score
_SEED = 0
_EPS = 1e-6
_METHOD = (  # ensemble.json's `method`, for classification and for regression
    "stacked: a log-linear pool of the members (weights >= 0, a bias per class) fitted on val by log loss",
    "stacked: a linear pool of the members' values (weights >= 0, a bias) fitted on val by squared error",
)


@dataclass(frozen=True)
class Stacker:
    """A fitted pool: the members it reads (weight > 0), their weights and one bias per output."""

    task: str
    members: tuple[str, ...]
    weights: tuple[float, ...]
    bias: tuple[float, ...]

    def predict(self, predictions: Mapping[str, np.ndarray]) -> np.ndarray:
        """The pooled prediction in the members' own form (P(positive), class probabilities, values)."""
        pooled = np.tensordot(np.asarray(self.weights), _stacked(self.task, predictions, self.members), 1)
        pooled = pooled + np.asarray(self.bias)  # (N,) + (1,) for regression, (N, C) + (C,) otherwise
        if self.task == "regression":
            return pooled
        probabilities = np.exp(log_softmax(pooled, axis=1))
        return probabilities[:, 1] if self.task == "binary" else probabilities

    def shares(self) -> dict[str, float]:
        """Each member's share of the total weight: what the report and ensemble.json's `members` show."""
        total = sum(self.weights)
        return {name: weight / total for name, weight in sorted(zip(self.members, self.weights, strict=True))}

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "log-linear pool" if self.task != "regression" else "linear pool",
            "members": list(self.members),
            "weights": list(self.weights),
            "bias": list(self.bias),
        }

    @classmethod
    def from_json(cls, task: str, data: Any, outputs: int | None = None) -> Stacker:
        """The stacker ensemble.json holds, with `outputs` biases when given (1 for regression, 2 for
        binary, one per class); ValueError naming what is wrong with it."""
        if task not in TASKS:
            raise ValueError(f"a stacker serves {', '.join(TASKS)} targets, not {task}")
        if not isinstance(data, dict):
            raise ValueError("'stacker' must be an object")
        members, weights, bias = data.get("members"), data.get("weights"), data.get("bias")
        if not (isinstance(members, list) and members and all(isinstance(m, str) for m in members)):
            raise ValueError("'stacker.members' must list member names")
        if not (isinstance(weights, list) and len(weights) == len(members)) or not all(map(_finite, weights)):
            raise ValueError("'stacker.weights' must hold one finite number per member")
        if any(w <= 0 for w in weights):
            raise ValueError("'stacker.weights' must be positive")
        if not (isinstance(bias, list) and bias and all(_finite(v) for v in bias)):
            raise ValueError("'stacker.bias' must hold finite numbers")
        if outputs is not None and len(bias) != outputs:
            raise ValueError(f"'stacker.bias' must hold {outputs} numbers (one per output), not {len(bias)}")
        return cls(task, tuple(members), tuple(float(w) for w in weights), tuple(float(v) for v in bias))


def fit_stacker(
    task: str, y: np.ndarray, predictions: Mapping[str, np.ndarray], ridge: float = RIDGE
) -> Stacker:
    """The pool that minimises log loss (squared error for regression) on these rows."""
    if task not in TASKS:
        raise ValueError(f"stacking supports {', '.join(TASKS)}, not {task}")
    names = tuple(sorted(predictions))
    stacked = _stacked(task, predictions, names)
    y = np.asarray(y)
    n_members, n_rows = stacked.shape[0], stacked.shape[1]
    outputs = 1 if task == "regression" else stacked.shape[2]
    prior = np.full(n_members, 1.0 / n_members)
    if task == "regression":
        scale = float(np.var(y)) or 1.0  # squared error in units of the target's variance
        target = y.astype(np.float64)

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:n_members], theta[n_members:]
            residual = np.tensordot(w, stacked, 1) + b[0] - target
            value = float(residual @ residual) / (n_rows * scale)
            grad_w = 2 * stacked @ residual / (n_rows * scale)
            grad_b = np.array([2 * residual.sum() / (n_rows * scale)])
            return _ridged(value, grad_w, grad_b, w, b, prior, ridge, n_rows)

    else:
        onehot = np.eye(outputs)[y.astype(int)]

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:n_members], theta[n_members:]
            log_p = log_softmax(np.tensordot(w, stacked, 1) + b, axis=1)
            value = -float((onehot * log_p).sum()) / n_rows
            residual = (np.exp(log_p) - onehot) / n_rows  # d loss / d logits
            grad_w = np.einsum("nc,mnc->m", residual, stacked)
            return _ridged(value, grad_w, residual.sum(axis=0), w, b, prior, ridge, n_rows)

    start = np.concatenate([prior, np.zeros(outputs)])
    bounds = [(0.0, None)] * n_members + [(None, None)] * outputs
    theta = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds).x
    weights, bias = theta[:n_members], theta[n_members:]
    kept = [i for i in range(n_members) if weights[i] > _EPS]
    if not kept:  # every weight at zero: the biases alone, the prior; keep the best-weighted member
        kept = [int(np.argmax(weights))]
    return Stacker(
        task,
        tuple(names[i] for i in kept),
        tuple(float(max(weights[i], _EPS)) for i in kept),
        tuple(float(v) for v in bias),
    )


def combine(
    task: str,
    y_val: np.ndarray,
    val_predictions: Mapping[str, np.ndarray],
    metric: str | None = None,
    mode: Combine = "caruana",
) -> dict[str, Any]:
    """ensemble.json's selection: Caruana's weights, or the stacker (mode `stacking`, or `auto`
    where it scores higher out of fold on val); `auto` records both out-of-fold scores."""
    metric = resolve_metric(task, metric)
    y_val = np.asarray(y_val)
    applies = task in TASKS and len(y_val) >= MIN_ROWS
    if mode == "stacking" and applies:  # the selection is fitted only where it may be kept
        return _pooled(task, metric, y_val, val_predictions, "stacking (train.combine)")
    caruana = select_ensemble(task, y_val, val_predictions, metric=metric).to_json()
    if mode == "caruana":
        return caruana
    if not applies:
        why = f"{task} targets" if task not in TASKS else f"{len(y_val)} val rows"
        return {**caruana, "combined_by": f"caruana (stacking does not apply to {why})"}
    caruana_oof, stacking_oof = _out_of_fold(task, metric, y_val, val_predictions)
    outcome = {
        "out_of_fold": {
            "caruana": signed_score(metric, caruana_oof[0]),
            "stacking": signed_score(metric, stacking_oof[0]),
            "folds": FOLDS,
            "metric": metric,
        }
    }
    if stacking_oof <= caruana_oof:
        return {**caruana, **outcome, "combined_by": "caruana (scored higher out of fold on val)"}
    chosen = "stacking (scored higher out of fold on val)"
    return {**_pooled(task, metric, y_val, val_predictions, chosen), **outcome}


def _pooled(
    task: str, metric: str, y_val: np.ndarray, val_predictions: Mapping[str, np.ndarray], chosen: str
) -> dict[str, Any]:
    """ensemble.json's selection for the stacker fitted on every val row."""
    stacker = fit_stacker(task, y_val, val_predictions)
    return {
        "members": stacker.shares(),
        "val": score(task, metric, y_val, stacker.predict(val_predictions)),
        "selected_by": f"val {metric}",
        "member_val": member_scores(task, metric, y_val, val_predictions),
        "method": _METHOD[task == "regression"],
        "stacker": stacker.to_json(),
        "combined_by": chosen,
    }


def _out_of_fold(
    task: str, metric: str, y: np.ndarray, predictions: Mapping[str, np.ndarray]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(metric, minus smooth loss) of Caruana's selection and of the stacker, each scored on
    the val rows it was not fitted on."""
    folds = np.random.default_rng(_SEED).permutation(len(y)) % FOLDS
    first = next(iter(predictions.values()))
    caruana = np.zeros(first.shape, dtype=np.float64)
    stacked = np.zeros(first.shape, dtype=np.float64)
    for fold in range(FOLDS):
        fit, held = folds != fold, folds == fold
        part = {name: p[fit] for name, p in predictions.items()}
        rest = {name: p[held] for name, p in predictions.items()}
        selection = select_ensemble(task, y[fit], part, metric=metric)
        caruana[held] = blend({n: rest[n] for n in selection.weights}, selection.weights)
        stacked[held] = fit_stacker(task, y[fit], part).predict(rest)
    return selection_key(task, metric, y, caruana), selection_key(task, metric, y, stacked)


def _stacked(task: str, predictions: Mapping[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """(M, N) values for regression; (M, N, C) log-probabilities otherwise."""
    if task == "regression":
        return np.stack([np.asarray(predictions[n], dtype=np.float64) for n in names])
    logs = []
    for name in names:
        p = np.clip(np.asarray(predictions[name], dtype=np.float64), _EPS, 1 - _EPS)
        logs.append(np.log(np.stack([1 - p, p], axis=1)) if task == "binary" else np.log(p))
    return np.stack(logs)


def _ridged(
    value: float,
    grad_w: np.ndarray,
    grad_b: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    prior: np.ndarray,
    ridge: float,
    rows: int,
) -> tuple[float, np.ndarray]:
    """The loss with its ridge (per row, so more rows weigh the data more), and its gradient."""
    value += ridge * (float(((w - prior) ** 2).sum()) + float((b**2).sum())) / rows
    grad_w = grad_w + 2 * ridge * (w - prior) / rows
    grad_b = grad_b + 2 * ridge * b / rows
    return value, np.concatenate([grad_w, grad_b])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
