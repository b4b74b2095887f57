"""Every figure renders to a real PNG from the tables evaluate writes."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.evaluate import figures
from tasks.evaluate.evaluation import plot_tables
from tasks.train.dataset import FeatureSet


def _image(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def _is_drawn(png: bytes) -> bool:
    """A real PNG that is not one flat colour (an empty figure would be)."""
    pixels = np.asarray(_image(png).convert("L"))
    return pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 5


def _tables(task: str) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    n = 120
    if task == "multiclass":
        target, prediction, classes = (
            rng.integers(0, 4, size=n),
            rng.dirichlet(np.ones(4), size=n),
            tuple("abcd"),
        )
    elif task == "binary":
        target, prediction, classes = (
            rng.integers(0, 2, size=n).astype(np.float32),
            rng.random(n),
            ("no", "yes"),
        )
    else:
        target, prediction, classes = rng.normal(size=n).astype(np.float32), rng.normal(size=n), ()
    rows = FeatureSet(np.arange(n).astype(str), np.full(n, "test"), target, {}, {}, classes)
    return plot_tables(task, rows, prediction)


@pytest.mark.parametrize(
    "data_name",
    ["roc.csv", "pr.csv", "confusion.csv", "calibration.csv", "pred_vs_true.csv", "residuals.csv"],
)
def test_each_plot_data_file_draws_a_png(data_name: str) -> None:
    task = "regression" if data_name in ("pred_vs_true.csv", "residuals.csv") else "binary"
    _, draw = figures.FROM_PLOT_DATA[data_name]
    assert _is_drawn(figures.to_png(draw(_tables(task)[data_name])))


def test_confusion_of_many_classes_still_draws() -> None:
    rng = np.random.default_rng(0)
    labels = [f"class_{i}" for i in rng.integers(0, 60, size=500)]
    table = pd.DataFrame({"actual": labels, "predicted": rng.permutation(labels)})
    assert _is_drawn(figures.to_png(figures.confusion(table)))


def test_learning_curve_draws() -> None:
    table = pd.DataFrame(
        {"epoch": [1, 2, 3, 4], "train_loss": [0.7, 0.5, 0.4, 0.35], "val_loss": [0.7, 0.6, 0.55, 0.6]}
    )
    assert _is_drawn(figures.to_png(figures.learning_curve(table)))


def test_importance_draws_with_error_bars() -> None:
    table = pd.DataFrame(
        {
            "feature": ["price", "photo"],
            "modality": ["tabular", "image"],
            "importance": [0.2, 0.01],
            "std": [0.02, 0.01],
        }
    )
    assert _is_drawn(figures.to_png(figures.importance(table, "drop in auc")))


def test_contributions_draw_with_and_without_intervals() -> None:
    table = pd.DataFrame(
        {
            "model": ["fused (all modalities)", "fused without text", "text only"],
            "kind": ["fused", "masked", "single"],
            "value": [0.85, 0.8, 0.7],
            "low": [0.8, np.nan, 0.6],
            "high": [0.9, np.nan, 0.78],
        }
    )
    assert _is_drawn(figures.to_png(figures.contributions(table, "auc")))


@pytest.mark.parametrize("numeric", [False, True])
def test_embedding_draws_for_classes_and_values(numeric: bool) -> None:
    rng = np.random.default_rng(0)
    labels = rng.normal(size=50) if numeric else rng.choice(["a", "b", "c"], size=50)
    assert _is_drawn(figures.to_png(figures.embedding(rng.normal(size=(50, 2)), labels, "PCA", numeric)))


def test_block_weights_heatmap_draws() -> None:
    table = pd.DataFrame(
        {
            "label": ["a", "a", "b", "b"],
            "block": ["tabular", "text.t"] * 2,
            "weight": [0.3, 0.7, 0.6, 0.4],
            "rows": 2,
        }
    )
    assert _is_drawn(figures.to_png(figures.block_weights(table)))
