"""Evaluate: test-split metrics of the fused model next to the baselines, with uncertainty.

Baselines are the same head trained on one modality's inputs, so the table answers the
question a user asks first: does fusing the modalities beat using the best one alone? The
bootstrap intervals say whether a difference is larger than the noise of a small test split.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import precision_recall_curve, roc_curve
from threadpoolctl import threadpool_limits
from torch import nn

from modelzoo.heads.base import FusionHead
from tasks.scores.metrics import compute_metrics, higher_is_better, resampled_scores, resolve_metric, score
from tasks.scores.model_names import FUSED, FUSED_HEAD, MAJORITY, MEAN, PRIOR_LABELS, SKLEARN
from tasks.train.bundle import BundleMeta, predict_with
from tasks.train.dataset import FeatureSet, modality_of, with_blocks
from tasks.train.training import embed

NOT_SINGLE = frozenset({FUSED_HEAD, SKLEARN, MAJORITY, MEAN})  # baselines that are not one modality
WITHOUT = "without_"  # prefix of the fused model's predictions with one modality masked
CALIBRATION_BINS = 10
TSNE_MAX_ROWS = 1000  # t-SNE up to this many test rows, PCA beyond (t-SNE gets slow on CPU)
# Half scikit-learn's default: its first 250 iterations are early exaggeration, and a few
# hundred test rows settle well within the next 250. Every scheduled retrain draws this plot:
# 3.5-4 s of a 40 s retrain on 6,000 rows (930 test rows), now about half that.
TSNE_ITERATIONS = 500


# --- what each modality contributes -----------------------------------------------------


def masked(features: FeatureSet, modality: str) -> FeatureSet:
    """The rows with every block of `modality` marked absent.

    Heads replace absent blocks with their learned 'missing' embedding, so this asks the
    fused model what it predicts for rows that simply lack the modality, without retraining.
    """
    return FeatureSet(
        ids=features.ids,
        split=features.split,
        target=features.target,
        inputs=features.inputs,
        present={
            block: np.zeros_like(mask) if modality_of(block) == modality else mask
            for block, mask in features.present.items()
        },
        classes=features.classes,
    )


def ablation_predictions(model: nn.Module, meta: BundleMeta, test: FeatureSet) -> dict[str, np.ndarray]:
    """The fused model's predictions with each of its modalities masked out in turn."""
    modalities = sorted({modality_of(block) for block in meta.in_dims})
    if len(modalities) < 2:
        return {}  # masking the only modality leaves nothing to measure
    return {m: predict_with(model, meta, masked(test, m)) for m in modalities}


def untrained_missing(train: FeatureSet, modality_dropout: float) -> list[str]:
    """Modalities whose 'missing' embedding never trained: present in every train row, no dropout."""
    if modality_dropout > 0:
        return []
    always = {}
    for block, mask in train.present.items():
        modality = modality_of(block)
        always[modality] = always.get(modality, True) and bool(np.all(mask))
    return sorted(m for m, every_row in always.items() if every_row)


# --- the baseline that reads no input ---------------------------------------------------


def prior_name(task: str) -> str:
    """The name of the no-input baseline: `mean` for regression, `majority` for the class tasks."""
    return MEAN if task == "regression" else MAJORITY


def prior_predictions(task: str, train_target: np.ndarray, rows: int, classes: int = 0) -> np.ndarray:
    """What a model that never looks at the inputs predicts for `rows` rows, in `predict`'s form.

    The train rows' class frequencies as probabilities (binary: the positive share; multilabel:
    each label's share), or their mean for regression. It is the floor every trained model must
    clear, and on an imbalanced target a high one: 0.293 accuracy on PetFinder's five classes.
    """
    target = np.asarray(train_target, dtype=np.float64)
    if task == "multiclass":
        counts = np.bincount(target.astype(np.int64), minlength=classes)
        return np.tile(counts / counts.sum(), (rows, 1))  # (rows, C)
    if task == "multilabel":
        return np.tile(target.mean(axis=0), (rows, 1))  # (rows, C)
    return np.full(rows, target.mean())  # (rows,)


def single_modalities(names: Iterable[str]) -> list[str]:
    """The single-modality models among `names`: every baseline but fused_head, sklearn and majority/mean."""
    return [name for name in names if name not in NOT_SINGLE]


# --- metrics and intervals --------------------------------------------------------------


def primary_score(task: str, y_true: np.ndarray, y_pred: np.ndarray, metric: str | None = None) -> float:
    """The chosen metric (`evaluate.metric`; None: the task's default) alone, fast enough to
    recompute on a thousand resamples (tasks.scores.metrics.score). NaN where undefined."""
    return score(task, resolve_metric(task, metric), y_true, y_pred)


def bootstrap_intervals(
    task: str,
    y_true: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    metric: str | None = None,
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals of `metric` (the task's default), per model and fused-minus-each.

    Every model is scored on the same resampled test rows (one seeded stream), so the
    difference intervals are paired: they show whether fused beats a baseline on these rows,
    which the two separate intervals cannot (they overlap even when one model always wins).
    Resamples where the metric is undefined (one class only, for AUC) are skipped.
    """
    y_true = np.asarray(y_true)
    metric = resolve_metric(task, metric)
    rng = np.random.default_rng(seed)
    names = list(predictions)
    scores = np.empty((resamples, len(names)))
    chunk = max(1, min(100, 2_000_000 // max(len(y_true), 1)))  # resamples at once: bounded memory
    for start in range(0, resamples, chunk):
        rows = [rng.integers(0, len(y_true), size=len(y_true)) for _ in range(min(chunk, resamples - start))]
        for i, name in enumerate(names):
            scores[start : start + len(rows), i] = resampled_scores(
                task, metric, y_true, predictions[name], rows
            )
    tail = (1 - level) / 2 * 100
    intervals = {}
    for i, name in enumerate(names):
        intervals[name] = _percentiles(scores[:, i], tail)
    if FUSED in names:
        fused = scores[:, names.index(FUSED)]
        for i, name in enumerate(names):
            if name != FUSED:
                intervals[f"{FUSED}_minus_{name}"] = _percentiles(fused - scores[:, i], tail)
    return intervals


def _percentiles(values: np.ndarray, tail: float) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return {"low": float("nan"), "high": float("nan")}
    low, high = np.percentile(values, [tail, 100 - tail])
    return {"low": float(low), "high": float(high)}


def metrics_report(
    task: str,
    y_true: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    ablation: Mapping[str, np.ndarray],
    rows_per_split: dict[str, int],
    resamples: int = 1000,
    seed: int = 0,
    metric: str | None = None,
) -> dict:
    """The metrics.json content.

    `predictions` holds `fused` and one entry per baseline (modalities, `sklearn`);
    `ablation` the fused model's predictions with a modality masked, by modality. The keys the
    foundation defined (task, primary_metric, test, baselines, rows) keep their meaning, so
    `dvc metrics diff` against older runs still lines up; `primary_metric` is the chosen one
    (`evaluate.metric`, None: the task's default), and every model's metrics include it.
    """
    level = 0.95
    primary = resolve_metric(task, metric)
    every = {**predictions, **{WITHOUT + m: p for m, p in ablation.items()}}
    return {
        "task": task,
        "primary_metric": primary,
        "test": compute_metrics(task, y_true, predictions[FUSED], primary),
        "baselines": {
            name: compute_metrics(task, y_true, pred, primary)
            for name, pred in sorted(predictions.items())
            if name != FUSED
        },
        "ablation": {
            WITHOUT + m: compute_metrics(task, y_true, p, primary) for m, p in sorted(ablation.items())
        },
        "intervals": {
            "metric": primary,
            "level": level,
            "resamples": resamples,
            "seed": seed,
            "method": "percentile bootstrap over test rows, paired across models",
            "higher_is_better": higher_is_better(primary),
            **bootstrap_intervals(task, y_true, every, resamples, level, seed, primary),
        },
        "rows": rows_per_split,
    }


# --- data files for DVC plots -----------------------------------------------------------


def plot_tables(task: str, test: FeatureSet, predictions: np.ndarray) -> dict[str, pd.DataFrame]:
    """Data files for DVC plots of the fused model, by file name (each one plot in dvc.yaml)."""
    if task == "regression":
        residual = test.target.astype(np.float64) - predictions
        return {
            "pred_vs_true.csv": pd.DataFrame({"target": test.target, "prediction": predictions}),
            "residuals.csv": pd.DataFrame({"prediction": predictions, "residual": residual}),
        }
    if task == "multilabel":  # calibration over every (row, label) probability; no single confusion
        return {"calibration.csv": calibration_table(predictions.ravel(), test.target.ravel())}
    classes = np.asarray(test.classes)
    actual = test.target.astype(int)
    tables: dict[str, pd.DataFrame] = {}
    if task == "binary":
        predicted = (predictions >= 0.5).astype(int)
        confidence, correct = predictions, actual
        if len(set(actual)) == 2:
            fpr, tpr, thresholds = roc_curve(actual, predictions)
            tables["roc.csv"] = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.clip(thresholds, 0, 1)})
            precision, recall, _ = precision_recall_curve(actual, predictions)
            tables["pr.csv"] = pd.DataFrame({"recall": recall, "precision": precision})
    else:
        predicted = predictions.argmax(axis=1)
        # Multiclass calibration asks: when the model says 80 % for its top class, is it right
        # 80 % of the time?
        confidence, correct = predictions.max(axis=1), (predicted == actual).astype(int)
    tables["confusion.csv"] = pd.DataFrame({"actual": classes[actual], "predicted": classes[predicted]})
    tables["calibration.csv"] = calibration_table(confidence, correct)
    return tables


def calibration_table(
    confidence: np.ndarray, outcome: np.ndarray, bins: int = CALIBRATION_BINS
) -> pd.DataFrame:
    """Mean predicted probability vs observed frequency in equal-count bins.

    Equal-count bins, because on a few hundred test rows fixed-width bins at the extremes
    hold a handful of rows each and their points are mostly noise.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    outcome = np.asarray(outcome, dtype=np.float64)
    order = np.argsort(confidence, kind="stable")
    groups = [g for g in np.array_split(order, min(bins, len(order))) if len(g)]
    return pd.DataFrame(
        {
            "predicted": [float(confidence[g].mean()) for g in groups],
            "observed": [float(outcome[g].mean()) for g in groups],
            "rows": [len(g) for g in groups],
        }
    )


def predictions_table(task: str, test: FeatureSet, predictions: np.ndarray) -> pd.DataFrame:
    """Per-row test predictions, kept so batch prediction can be checked against evaluate."""
    frame = pd.DataFrame({"row_id": test.ids.astype(str)})
    if task == "multiclass":
        for i, label in enumerate(test.classes):
            frame[f"prob_{label}"] = predictions[:, i]
        frame["prediction"] = np.asarray(test.classes)[predictions.argmax(axis=1)]
    elif task == "multilabel":
        for i, label in enumerate(test.classes):
            frame[f"prob_{label}"] = predictions[:, i]
        frame["prediction"] = ["|".join(np.asarray(test.classes)[row >= 0.5]) for row in predictions]
    elif task == "binary":
        frame[f"prob_{test.classes[1]}"] = predictions
        frame["prediction"] = np.asarray(test.classes)[(predictions >= 0.5).astype(int)]
    else:
        frame["prediction"] = predictions
    return frame


# --- the fused embedding ----------------------------------------------------------------


def fused_embedding(model: FusionHead, meta: BundleMeta, features: FeatureSet) -> np.ndarray:
    """(N, E): the fused representation of each row, as the head declares it (`predict_and_embed`)."""
    return embed(model, with_blocks(features, meta.in_dims))


def project_2d(embedding: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2) coordinates and the method's name: t-SNE for small test sets, PCA otherwise.

    t-SNE shows cluster structure PCA flattens, but costs too much beyond a few thousand rows.
    """
    n_rows = len(embedding)
    if n_rows < 3 or embedding.shape[1] < 2:
        return np.zeros((n_rows, 2)), "none (too few rows or dimensions)"
    if n_rows <= TSNE_MAX_ROWS:
        perplexity = float(min(30.0, (n_rows - 1) / 3))
        tsne = TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=TSNE_ITERATIONS
        )
        with threadpool_limits(limits=1, user_api="openmp"):  # see tasks/train/sklearn_baseline.py
            return tsne.fit_transform(embedding), "t-SNE"
    return PCA(n_components=2, random_state=seed).fit_transform(embedding), "PCA"


def contributions_table(metrics: dict, sklearn_name: str | None = None) -> pd.DataFrame:
    """One row per model with its primary metric and interval: fused, masked, single, sklearn, majority.

    `key` is the model's name in metrics.json's `intervals` (and `fused_minus_<key>`).
    """
    primary = metrics["primary_metric"]
    intervals = metrics["intervals"]
    final = "ensemble (final model)" if FUSED_HEAD in metrics["baselines"] else "fused (all modalities)"
    rows = [(final, "fused", FUSED, metrics["test"])]
    if FUSED_HEAD in metrics["baselines"]:
        rows.append(("fused head alone", "fused", FUSED_HEAD, metrics["baselines"][FUSED_HEAD]))
    rows += [
        (f"fused head without {k.removeprefix(WITHOUT)}", "masked", k, v)
        for k, v in metrics["ablation"].items()
    ]
    baselines = metrics["baselines"]
    rows += [(f"{k} only", "single", k, baselines[k]) for k in single_modalities(baselines)]
    if SKLEARN in baselines:
        label = f"sklearn ({sklearn_name})" if sklearn_name else "sklearn"
        rows.append((label, "sklearn", SKLEARN, baselines[SKLEARN]))
    rows += [(PRIOR_LABELS[k], "prior", k, baselines[k]) for k in (MAJORITY, MEAN) if k in baselines]
    nan = {"low": float("nan"), "high": float("nan")}
    return pd.DataFrame(
        [
            {"model": label, "kind": kind, "key": key, "value": values[primary], **intervals.get(key, nan)}
            for label, kind, key, values in rows
        ],
        columns=["model", "kind", "key", "value", "low", "high"],
    )
