"""Evaluate: test-split metrics of the fused model next to single-modality baselines.

Baselines are the same head trained on one modality's inputs, so the table answers the
question a user asks first: does fusing the modalities beat using the best one alone?
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve
from torch import nn

from tasks.bundle import BundleMeta
from tasks.dataset import FeatureSet
from tasks.metrics import PRIMARY_METRIC, compute_metrics
from tasks.training import TargetScaling, predict


def with_blocks(features: FeatureSet, blocks: dict[str, int]) -> FeatureSet:
    """The FeatureSet restricted to the blocks a model was trained on."""
    missing = [b for b in blocks if b not in features.inputs]
    if missing:
        raise KeyError(f"features lack blocks the model needs: {missing}")
    return FeatureSet(
        ids=features.ids,
        split=features.split,
        target=features.target,
        inputs={b: features.inputs[b] for b in blocks},
        present={b: features.present[b] for b in blocks},
        classes=features.classes,
    )


def predict_with(model: nn.Module, meta: BundleMeta, features: FeatureSet) -> np.ndarray:
    """Predictions of a bundle's model on the given rows."""
    scaling = TargetScaling(*meta.target_scaling) if meta.target_scaling else None
    return predict(model, with_blocks(features, meta.in_dims), meta.task, scaling)


def metrics_report(
    test: FeatureSet,
    fused: tuple[nn.Module, BundleMeta],
    baselines: dict[str, tuple[nn.Module, BundleMeta]],
    rows_per_split: dict[str, int],
) -> tuple[dict, np.ndarray]:
    """The metrics.json content and the fused model's test predictions."""
    model, meta = fused
    task = meta.task
    predictions = predict_with(model, meta, test)
    report = {
        "task": task,
        "primary_metric": PRIMARY_METRIC[task],
        "test": compute_metrics(task, test.target, predictions),
        "baselines": {
            modality: compute_metrics(task, test.target, predict_with(m, bmeta, test))
            for modality, (m, bmeta) in sorted(baselines.items())
        },
        "rows": rows_per_split,
    }
    return report, predictions


def plot_tables(task: str, test: FeatureSet, predictions: np.ndarray) -> dict[str, pd.DataFrame]:
    """Data files for DVC plots: ROC and confusion (classification) or predicted vs true."""
    if task == "regression":
        return {"pred_vs_true.csv": pd.DataFrame({"target": test.target, "prediction": predictions})}
    classes = np.asarray(test.classes)
    if task == "binary":
        predicted = (predictions >= 0.5).astype(int)
        actual = test.target.astype(int)
        fpr, tpr, thresholds = roc_curve(actual, predictions) if len(set(actual)) == 2 else ([], [], [])
        tables = {"roc.csv": pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.clip(thresholds, 0, 1)})}
    else:
        predicted = predictions.argmax(axis=1)
        actual = test.target.astype(int)
        tables = {}
    tables["confusion.csv"] = pd.DataFrame({"actual": classes[actual], "predicted": classes[predicted]})
    return tables


def predictions_table(task: str, test: FeatureSet, predictions: np.ndarray) -> pd.DataFrame:
    """Per-row test predictions, kept so batch prediction can be checked against evaluate."""
    frame = pd.DataFrame({"row_id": test.ids.astype(str)})
    if task == "multiclass":
        for i, label in enumerate(test.classes):
            frame[f"prob_{label}"] = predictions[:, i]
        frame["prediction"] = np.asarray(test.classes)[predictions.argmax(axis=1)]
    elif task == "binary":
        frame[f"prob_{test.classes[1]}"] = predictions
        frame["prediction"] = np.asarray(test.classes)[(predictions >= 0.5).astype(int)]
    else:
        frame["prediction"] = predictions
    return frame
