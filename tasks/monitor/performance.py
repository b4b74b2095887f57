"""The served model's performance on a batch: realized where labels arrived, estimated before.

Realized: the batch rows whose target is known, scored with the metric the served model was
selected on (its bundle's `metric`, `evaluate.metric` when it was trained; the task's default
for older bundles) and its percentile bootstrap interval (tasks/evaluate/evaluation.py), the
numbers evaluate reports for the test split.

Estimated: confidence-based performance estimation (CBPE), the method NannyML's CBPE
implements. Where a model's probabilities are calibrated, they say how often it is right:
of the rows it gives 0.8, eight in ten are positive. The batch's expected confusion counts
then follow from its probabilities alone, and the metric from those, with no label at all.
The probabilities are first calibrated on the model's own held-out rows (val and test, or test
alone after a refit taught it val: `train.refit`,
whose labels are known); rows it never fitted, so the calibration is not flattered. CBPE
follows covariate shift (the inputs move, P(label | inputs) stays): the batch moves to
regions where the model is surer or less sure, and the estimate moves with it. It cannot
see a concept change (the same inputs now mean other labels); only realized labels show
that, which is why both are reported side by side.

Written here rather than taken from NannyML: nannyml 0.13 pins lightgbm below 4.6 and
brings FLAML, plotly, kaleido, cloud file systems and a telemetry client, for what is, for
our metrics, one calibration fit and a few sums. numpy and scikit-learn suffice. Regression
has no label-free estimate here: NannyML's DLE trains a second model on the first one's
errors, which is out of scope; the report says so and shows the realized error alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from statistics import NormalDist

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from tasks.config import DriftThresholds
from tasks.data.labels import parse_labels
from tasks.evaluate.evaluation import bootstrap_intervals, primary_score
from tasks.monitor.checks import PREDICTION, Check
from tasks.scores.metrics import from_confusion, higher_is_better, resolve_metric

# Below this many labelled reference rows the raw probabilities are used: a fit on fewer rows
# adds more noise than the model's miscalibration it removes.
MIN_CALIBRATION_ROWS = 50
# From this many, isotonic regression (any monotone distortion); below, Platt scaling on the
# logit (two parameters, steady on a few hundred rows). On simulated models distorted in
# logistic and non-logistic ways, Platt's estimates were as good or steadier below about
# 1,000 reference rows, isotonic's better above.
ISOTONIC_ROWS = 1000
RESAMPLES = 1000  # bootstrap resamples of the realized metric (as evaluate)
LEVEL = 0.95
PERFORMANCE_COLUMN = "performance"  # the column name of the realized-metric check
_EPS = 1e-6

Mapping = Callable[[np.ndarray], np.ndarray]


# --- calibration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """Per-column maps from the model's probability to a calibrated one (None: kept as it is)."""

    task: str
    maps: tuple[Mapping | None, ...]
    description: str  # for the report, e.g. "isotonic on 3000 labelled held-out rows"

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, same shape; multiclass rows are renormalised to sum to 1."""
        columns = _columns(probabilities)  # (N, C)
        out = np.column_stack(
            [m(columns[:, c]) if m is not None else columns[:, c] for c, m in enumerate(self.maps)]
        )
        out = np.clip(out.astype(np.float64), 0.0, 1.0)
        if self.task == "multiclass":
            total = out.sum(axis=1, keepdims=True)
            # a row every one-vs-rest map sends to 0 keeps the model's own probabilities
            out = np.where(total > 0, out / np.where(total > 0, total, 1.0), columns)
        return out[:, 0] if probabilities.ndim == 1 else out


def fit_calibration(task: str, truth: np.ndarray, probabilities: np.ndarray) -> Calibration:
    """One-vs-rest calibration of each class's (label's) probability on labelled rows.

    `truth` is encoded as `compute_metrics` takes it: 0/1 (binary), class indices
    (multiclass), a 0/1 matrix (multilabel).
    """
    columns = _columns(probabilities)
    hits = _indicators(task, truth, columns.shape[1])
    n = len(columns)
    if n < MIN_CALIBRATION_ROWS:
        kept = (None,) * columns.shape[1]
        reason = f"none: {n} labelled held-out rows, fewer than {MIN_CALIBRATION_ROWS}"
        return Calibration(task, kept, reason)
    method = "isotonic" if n >= ISOTONIC_ROWS else "platt"
    maps = tuple(_fit_column(columns[:, c], hits[:, c], method) for c in range(columns.shape[1]))
    return Calibration(task, maps, f"{method} on {n} labelled held-out rows")


def _fit_column(scores: np.ndarray, hits: np.ndarray, method: str) -> Mapping | None:
    """A monotone map score -> P(hit); None when the reference rows hold one outcome only."""
    if hits.min() == hits.max():
        return None
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, hits)
        return iso.predict
    platt = LogisticRegression().fit(_logit(scores)[:, None], hits)
    return lambda values: platt.predict_proba(_logit(values)[:, None])[:, 1]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _columns(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    return p[:, None] if p.ndim == 1 else p


def _indicators(task: str, truth: np.ndarray, n_columns: int) -> np.ndarray:
    """(N, C) 0/1: did the row belong to column c's class (label)?"""
    truth = np.asarray(truth)
    if task == "multiclass":
        return (truth.astype(np.int64)[:, None] == np.arange(n_columns)[None, :]).astype(np.float64)
    return truth.reshape(len(truth), -1).astype(np.float64)


# --- the estimate (CBPE) ---------------------------------------------------------------------


def estimate_metric(metric: str, task: str, raw: np.ndarray, calibrated: np.ndarray) -> float | None:
    """The metric's expected value on these rows, from calibrated probabilities alone.

    The model's decisions (its ranking, its 0.5 threshold, its argmax) come from `raw`, what
    it serves; whether each is right is read from `calibrated`. None where no estimate is
    defined here (regression, and metrics CBPE does not cover in this module).
    """
    raw, p = np.asarray(raw, dtype=np.float64), np.asarray(calibrated, dtype=np.float64)
    if not len(raw):
        return None
    if task == "binary" and metric == "auc":
        return expected_auc(raw, p)
    if task == "multiclass" and metric == "accuracy":
        return float(np.mean(p[np.arange(len(p)), raw.argmax(axis=1)]))
    if task in ("binary", "multilabel") and metric in ("accuracy", "f1", "f1_micro"):
        predicted = raw >= 0.5
        if metric == "accuracy":
            return float(np.mean(np.where(predicted, p, 1 - p)))
        return _expected_f1(predicted, p)
    if task in ("binary", "multiclass") and metric == "log_loss":
        return _expected_log_loss(raw, _columns_of(task, p))
    if task in ("binary", "multiclass") and metric != "auc":
        return from_confusion(metric, expected_confusion(task, raw, p))
    return None


def expected_confusion(task: str, raw: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(C, C) expected counts, truth x predicted: each row adds its calibrated probabilities to
    the column of the class the model predicts for it (0.5 threshold or argmax of `raw`).

    Every decision metric (balanced accuracy, F1s, quadratic kappa) then follows from these
    counts as from real ones: CBPE's estimate of the confusion matrix.
    """
    if task == "binary":
        predicted = (raw >= 0.5).astype(np.int64)
    else:
        predicted = raw.argmax(axis=1)
    truth = _columns_of(task, p)  # (N, C) P(true class)
    counts = np.zeros((truth.shape[1], truth.shape[1]))
    np.add.at(counts.T, predicted, truth)  # counts[:, j] += truth of rows predicted j
    return counts


def _columns_of(task: str, p: np.ndarray) -> np.ndarray:
    """(N, C) class probabilities: binary's P(1) (N,) becomes (1 - p, p)."""
    return np.column_stack([1 - p, p]) if task == "binary" else p


def _expected_log_loss(raw: np.ndarray, truth: np.ndarray) -> float:
    """The log loss the served probabilities would score, each class weighed by its calibrated chance."""
    served = np.clip(_columns_of("binary", raw) if raw.ndim == 1 else raw, _EPS, 1.0)
    return float(-np.mean(np.sum(truth * np.log(served), axis=1)))


def expected_auc(scores: np.ndarray, p: np.ndarray) -> float:
    """Area under the expected ROC curve: thresholds over the sorted scores, TP and FP as sums.

    Above each threshold the expected true positives are the sum of p, the expected false
    positives the sum of 1 - p; tied scores move together (one step, drawn as a diagonal).
    """
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], p[order]
    ends = np.r_[s[1:] != s[:-1], True]  # the last row of each group of tied scores
    tp, fp = np.cumsum(p)[ends], np.cumsum(1 - p)[ends]
    if tp[-1] <= 0 or fp[-1] <= 0:
        return math.nan  # every row surely one class: no ROC curve
    tpr, fpr = np.r_[0.0, tp / tp[-1]], np.r_[0.0, fp / fp[-1]]
    return float(np.trapezoid(tpr, fpr))


def _expected_f1(predicted: np.ndarray, p: np.ndarray) -> float:
    """2 TP / (2 TP + FP + FN) from expected counts (every cell of a multilabel matrix together)."""
    tp = float(np.sum(p * predicted))
    fp = float(np.sum((1 - p) * predicted))
    fn = float(np.sum(p * ~predicted))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else math.nan


# --- labels ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Labels:
    """The rows that have a label the model can be scored on, encoded as compute_metrics takes them."""

    truth: np.ndarray  # for the labelled rows only
    rows: np.ndarray  # (N,) bool: which rows those are
    unknown: int = 0  # labelled rows (labels) of a class the model never learned: left out


def encode_labels(task: str, classes: tuple[str, ...], values: pd.Series | None, n_rows: int) -> Labels:
    """Targets as the aligned table (or a batch file, typed as ingest types it) holds them.

    A missing cell is a row not labelled yet. A class the model has no output for cannot be
    scored by AUC (it has no score) and is left out of every metric, counted in `unknown`.
    """
    if values is None:
        return Labels(np.empty(0), np.zeros(n_rows, dtype=bool))
    values = values.reset_index(drop=True)
    present = values.notna().to_numpy()
    if task == "regression":
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        rows = np.isfinite(numbers)
        return Labels(numbers[rows], rows)
    if task == "multilabel":
        return _label_sets(classes, values, present)
    index = {c: i for i, c in enumerate(classes)}
    codes = values.astype("string").map(index).to_numpy(dtype=np.float64, na_value=np.nan)
    rows = present & np.isfinite(codes)
    truth = codes[rows] if task == "binary" else codes[rows].astype(np.int64)
    return Labels(truth, rows, int((present & ~rows).sum()))


def _label_sets(classes: tuple[str, ...], values: pd.Series, present: np.ndarray) -> Labels:
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(values), len(classes)), dtype=np.float32)
    unknown = 0
    for i in np.flatnonzero(present):
        for label in parse_labels(values.iloc[i]):
            if label in index:
                matrix[i, index[label]] = 1.0
            else:
                unknown += 1
    return Labels(matrix[present], present, unknown)


# --- one batch -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Performance:
    """The model's primary metric on one batch: estimated, realized (with its interval), reference."""

    metric: str
    higher_is_better: bool
    batch_rows: int
    labeled_rows: int
    estimate: float | None  # CBPE; None for regression
    realized: float | None  # on the labelled rows; None before labels arrive
    low: float | None  # realized's bootstrap interval
    high: float | None
    reference: float | None  # realized on the model's labelled held-out rows, the calibration set
    reference_low: float | None
    reference_high: float | None
    calibration: str
    notes: list[str] = field(default_factory=list)


def measure_performance(
    task: str,
    classes: tuple[str, ...],
    reference: tuple[pd.Series | None, np.ndarray],
    batch: tuple[pd.Series | None, np.ndarray],
    seed: int = 0,
    resamples: int = RESAMPLES,
    metric: str | None = None,
) -> Performance:
    """The estimate, realized metric and reference of one batch; each side is (targets, predictions).

    `reference` are the model's held-out rows (their targets known): they calibrate the
    probabilities and give the reference level the plot shows as a band. `metric` is the one
    the served model was selected on (None: the task's default).
    """
    metric, notes = resolve_metric(task, metric), []
    ref_labels = encode_labels(task, classes, reference[0], len(reference[1]))
    new_labels = encode_labels(task, classes, batch[0], len(batch[1]))
    ref_pred, new_pred = np.asarray(reference[1])[ref_labels.rows], np.asarray(batch[1])
    estimate, calibration = None, "none: regression has no label-free estimate (out of scope)"
    if task != "regression":
        fitted = fit_calibration(task, ref_labels.truth, ref_pred)
        estimate = _finite(estimate_metric(metric, task, new_pred, fitted.apply(new_pred)))
        calibration = fitted.description
    else:
        notes.append("regression: no label-free estimate (NannyML's DLE would be needed); realized only")
    if new_labels.unknown:
        notes.append(f"{new_labels.unknown} batch labels are classes the model never learned: left out")
    realized = _realized(task, metric, new_labels.truth, new_pred[new_labels.rows], seed, resamples)
    if new_labels.rows.any() and realized[0] is None:
        notes.append(f"{metric} is undefined on the {int(new_labels.rows.sum())} labelled rows (one class)")
    ref = _realized(task, metric, ref_labels.truth, ref_pred, seed, resamples)
    return Performance(
        metric=metric, higher_is_better=higher_is_better(metric), batch_rows=len(new_pred),
        labeled_rows=int(new_labels.rows.sum()), estimate=estimate, realized=realized[0], low=realized[1],
        high=realized[2], reference=ref[0], reference_low=ref[1], reference_high=ref[2],
        calibration=calibration, notes=notes,
    )  # fmt: skip


def _realized(
    task: str, metric: str, truth: np.ndarray, predictions: np.ndarray, seed: int, resamples: int
) -> tuple[float | None, float | None, float | None]:
    """`metric` on labelled rows and its percentile bootstrap interval (evaluate's)."""
    if not len(truth):
        return None, None, None
    value = _finite(primary_score(task, truth, predictions, metric))
    if value is None:
        return None, None, None
    batch = {"batch": predictions}
    interval = bootstrap_intervals(task, truth, batch, resamples, LEVEL, seed, metric)["batch"]
    return value, _finite(interval["low"]), _finite(interval["high"])


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def unmeasured(task: str, batch_rows: int, reason: str, metric: str | None = None) -> Performance:
    """A run that could not score the model (no rows, changed columns): recorded, with why."""
    metric = resolve_metric(task, metric)
    return Performance(
        metric=metric, higher_is_better=higher_is_better(metric), batch_rows=batch_rows, labeled_rows=0,
        estimate=None, realized=None, low=None, high=None, reference=None, reference_low=None,
        reference_high=None, calibration="none: not measured", notes=[reason],
    )  # fmt: skip


# --- the alarm once labels arrive ------------------------------------------------------------


def shortfall_check(performance: Performance, thresholds: DriftThresholds) -> Check | None:
    """A drift check of the realized metric against what the model was expected to score.

    The expected level is CBPE's estimate for this very batch: it already follows covariate
    shift, so a realized metric well below it means the labels no longer follow the inputs as
    they did (a concept change), which no input check can see. Regression has no estimate, so
    its level is the model's held-out metric, whose own sampling error then adds to the test's.
    One-sided z-test on the bootstrap standard errors; drift when significant (after Holm, with
    the run's other checks) and the shortfall reaches `threshold.performance` in metric units.
    None before labels arrive.
    """
    if performance.realized is None or performance.low is None or performance.high is None:
        return None
    error = _standard_error(performance.low, performance.high)
    expected = performance.estimate
    if expected is None:
        if (
            performance.reference is None
            or performance.reference_low is None
            or performance.reference_high is None
        ):
            return None
        expected = performance.reference
        error = math.hypot(error, _standard_error(performance.reference_low, performance.reference_high))
    sign = 1.0 if performance.higher_is_better else -1.0
    shortfall = sign * (expected - performance.realized)
    p_value = 0.5 * math.erfc(shortfall / (error * math.sqrt(2))) if error > 0 else float(shortfall <= 0)
    level = "estimated" if performance.estimate is not None else "held-out"
    check = Check(
        column=PERFORMANCE_COLUMN,
        role=PREDICTION,
        aspect="realized metric",
        test="one-sided z (bootstrap se)",
        statistic=shortfall / error if error > 0 else 0.0,
        p_value=p_value,
        p_adjusted=p_value,
        effect="shortfall",
        score=shortfall,
        threshold=thresholds.performance,
        drifted=False,
        detail=(
            f"realized {performance.metric} {performance.realized:.4f} on {performance.labeled_rows} "
            f"labelled rows against {level} {expected:.4f}"
        ),
        reference_rows=0,
        batch_rows=performance.labeled_rows,
    )
    return replace(check, drifted=check.p_adjusted < thresholds.alpha and shortfall >= thresholds.performance)


def _standard_error(low: float, high: float) -> float:
    return (high - low) / (2 * NormalDist().inv_cdf(0.5 + LEVEL / 2))  # 95 %: 2 x 1.96 errors wide
