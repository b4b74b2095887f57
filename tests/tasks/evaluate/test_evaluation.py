"""Evaluation helpers: ablation masks, bootstrap intervals, plot tables, the fused embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tasks.config import FusionConfig, TrainConfig
from tasks.evaluate.evaluation import (
    ablation_predictions,
    bootstrap_intervals,
    calibration_table,
    contributions_table,
    fused_embedding,
    masked,
    metrics_report,
    plot_tables,
    primary_score,
    project_2d,
)
from tasks.train.bundle import BundleMeta, predict_with
from tasks.train.dataset import FeatureSet
from tasks.train.training import build_head, train_model

FUSION = FusionConfig.model_validate({"head": "concat", "hidden": 16, "dropout": 0.0})
FAST = TrainConfig(epochs=5, lr=3e-3, batch_size=64, patience=5, seed=0, device="cpu")


def features(n_rows: int = 300, seed: int = 0) -> FeatureSet:
    """Binary target carried by the tabular block only; the text block is noise."""
    rng = np.random.default_rng(seed)
    tabular = rng.normal(size=(n_rows, 4)).astype(np.float32)
    target = (tabular[:, 0] > 0).astype(np.float32)
    split = np.array(["train", "val", "test"])[rng.choice(3, size=n_rows, p=[0.6, 0.2, 0.2])]
    return FeatureSet(
        ids=np.array([f"r{i}" for i in range(n_rows)]),
        split=split,
        target=target,
        inputs={"tabular": tabular, "text.a": rng.normal(size=(n_rows, 6)).astype(np.float32)},
        present={"tabular": np.ones(n_rows, dtype=bool), "text.a": np.ones(n_rows, dtype=bool)},
        classes=("0", "1"),
    )


@pytest.fixture(scope="module")
def fused() -> tuple[torch.nn.Module, BundleMeta, FeatureSet]:
    data = features()
    result = train_model(data, "binary", FUSION, FAST, progress=False)
    meta = BundleMeta(
        task="binary",
        fusion=FUSION.model_dump(),
        in_dims=result.in_dims,
        out_dim=result.out_dim,
        classes=data.classes,
        target_scaling=None,
        encoders={},
        tabular=None,
        best_epoch=result.best_epoch,
        params={},
    )
    return result.model, meta, data.of_split("test")


# --- ablation ---------------------------------------------------------------------------


def test_masking_a_modality_marks_only_its_blocks_absent() -> None:
    data = masked(features(50), "text")
    assert not data.present["text.a"].any() and data.present["tabular"].all()


def test_masking_keeps_the_values() -> None:
    original = features(50)
    np.testing.assert_array_equal(masked(original, "text").inputs["text.a"], original.inputs["text.a"])


def test_ablation_masking_the_informative_modality_hurts_most(fused) -> None:
    model, meta, test = fused
    ablated = ablation_predictions(model, meta, test)
    auc = {m: primary_score("binary", test.target, p) for m, p in ablated.items()}
    assert auc["tabular"] < 0.7 < auc["text"]


def test_ablation_of_a_single_modality_model_is_empty(fused) -> None:
    model, meta, test = fused
    single = BundleMeta(**{**meta.__dict__, "in_dims": {"tabular": 4}})
    assert ablation_predictions(model, single, test) == {}


# --- metrics and intervals --------------------------------------------------------------


def test_rank_auc_equals_sklearn_auc_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=200)
    scores = np.round(rng.random(200), 1)  # many ties
    assert primary_score("binary", y, scores) == pytest.approx(roc_auc_score(y, scores))


def test_auc_of_one_class_is_nan() -> None:
    assert np.isnan(primary_score("binary", np.ones(5), np.linspace(0, 1, 5)))


def _predictions(seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=200)
    good = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)  # AUC about 0.85: not perfect
    weak = rng.random(200)
    return y, {"fused": good, "text": weak}


def test_bootstrap_interval_contains_the_point_estimate() -> None:
    y, predictions = _predictions()
    interval = bootstrap_intervals("binary", y, predictions, resamples=300)["fused"]
    assert interval["low"] < primary_score("binary", y, predictions["fused"]) < interval["high"]


def test_bootstrap_is_reproducible_with_its_seed() -> None:
    y, predictions = _predictions()
    assert bootstrap_intervals("binary", y, predictions, resamples=100, seed=3) == bootstrap_intervals(
        "binary", y, predictions, resamples=100, seed=3
    )


def test_paired_difference_of_a_model_with_itself_is_exactly_zero() -> None:
    y, predictions = _predictions()
    intervals = bootstrap_intervals(
        "binary", y, {"fused": predictions["fused"], "copy": predictions["fused"]}, 100
    )
    assert intervals["fused_minus_copy"] == {"low": 0.0, "high": 0.0}


def test_paired_difference_excludes_zero_when_fused_is_clearly_better() -> None:
    y, predictions = _predictions()
    assert bootstrap_intervals("binary", y, predictions, resamples=300)["fused_minus_text"]["low"] > 0


def test_metrics_report_keeps_the_foundation_keys_and_adds_ablation_and_intervals() -> None:
    y, predictions = _predictions()
    report = metrics_report(
        "binary", y, predictions, {"text": predictions["fused"]}, {"test": 200}, resamples=50
    )
    assert set(report) == {"task", "primary_metric", "test", "baselines", "ablation", "intervals", "rows"}
    assert set(report["baselines"]) == {"text"} and set(report["ablation"]) == {"without_text"}
    assert {"fused", "text", "without_text", "fused_minus_without_text"} <= set(report["intervals"])


@pytest.mark.parametrize(("metric", "higher"), [("log_loss", False), ("balanced_accuracy", True)])
def test_metrics_report_headlines_the_chosen_metric_for_every_model(metric: str, higher: bool) -> None:
    """primary_metric names evaluate.metric, every model is scored on it, the intervals are of it."""
    y, predictions = _predictions()
    masked = {"text": predictions["fused"]}
    report = metrics_report("binary", y, predictions, masked, {"test": 200}, resamples=50, metric=metric)
    assert report["primary_metric"] == report["intervals"]["metric"] == metric
    assert report["intervals"]["higher_is_better"] is higher
    fused = report["test"][metric]
    assert report["intervals"]["fused"]["low"] < fused < report["intervals"]["fused"]["high"]
    assert metric in report["baselines"]["text"] and metric in report["ablation"]["without_text"]
    table = contributions_table(report)
    assert table.loc[table["key"] == "fused", "value"].item() == pytest.approx(fused)


def test_contributions_table_lists_every_model_once() -> None:
    y, predictions = _predictions()
    predictions["sklearn"] = predictions["text"]
    report = metrics_report(
        "binary", y, predictions, {"text": predictions["fused"]}, {"test": 200}, resamples=20
    )
    table = contributions_table(report, "logistic_regression")
    assert table["key"].tolist() == ["fused", "without_text", "text", "sklearn"]


# --- plot tables ------------------------------------------------------------------------


def _test_rows(task: str, n_rows: int = 80) -> tuple[FeatureSet, np.ndarray]:
    rng = np.random.default_rng(0)
    if task == "multiclass":
        target = rng.integers(0, 3, size=n_rows)
        prediction = rng.dirichlet(np.ones(3), size=n_rows)
        classes: tuple[str, ...] = ("a", "b", "c")
    elif task == "binary":
        target, prediction, classes = (
            rng.integers(0, 2, size=n_rows).astype(np.float32),
            rng.random(n_rows),
            ("n", "y"),
        )
    else:
        target, prediction, classes = rng.normal(size=n_rows).astype(np.float32), rng.normal(size=n_rows), ()
    rows = FeatureSet(np.arange(n_rows).astype(str), np.full(n_rows, "test"), target, {}, {}, classes)
    return rows, prediction


@pytest.mark.parametrize(
    ("task", "files"),
    [
        ("binary", {"roc.csv", "pr.csv", "confusion.csv", "calibration.csv"}),
        ("multiclass", {"confusion.csv", "calibration.csv"}),
        ("regression", {"pred_vs_true.csv", "residuals.csv"}),
    ],
)
def test_plot_tables_per_task(task: str, files: set[str]) -> None:
    assert set(plot_tables(task, *_test_rows(task))) == files


def test_residual_is_true_minus_predicted() -> None:
    rows, prediction = _test_rows("regression")
    table = plot_tables("regression", rows, prediction)["residuals.csv"]
    np.testing.assert_allclose(table["residual"], rows.target - prediction, rtol=1e-6)


def test_calibration_of_a_calibrated_model_lies_on_the_diagonal() -> None:
    rng = np.random.default_rng(0)
    probability = rng.random(20000)
    outcome = rng.random(20000) < probability
    table = calibration_table(probability, outcome)
    np.testing.assert_allclose(table["observed"], table["predicted"], atol=0.03)


def test_calibration_bins_hold_equal_counts() -> None:
    table = calibration_table(np.linspace(0, 1, 100), np.zeros(100))
    assert table["rows"].tolist() == [10] * 10


# --- embedding --------------------------------------------------------------------------


def test_fused_embedding_is_what_the_output_layer_reads(fused) -> None:
    model, meta, test = fused
    embedding = fused_embedding(model, meta, test)
    output_layer = model.mlp[-1]
    logits = output_layer(torch.as_tensor(embedding)).detach().numpy().squeeze(-1)
    np.testing.assert_allclose(
        1 / (1 + np.exp(-logits)), predict_with(model, meta, test), rtol=1e-5, atol=1e-6
    )


def test_projection_is_two_dimensional_and_names_its_method() -> None:
    coords, method = project_2d(np.random.default_rng(0).normal(size=(60, 8)))
    assert coords.shape == (60, 2) and method == "t-SNE"


def test_the_shortened_t_sne_still_keeps_neighbours_and_clusters() -> None:
    """TSNE_ITERATIONS is half scikit-learn's default: the plot must still show the structure."""
    from sklearn.manifold import trustworthiness

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 150)
    centres = rng.normal(scale=4.0, size=(3, 32))
    points = centres[labels] + rng.normal(size=(450, 32))
    coords, method = project_2d(points)
    assert method == "t-SNE" and trustworthiness(points, coords, n_neighbors=10) > 0.9
    spread = max(coords[labels == k].std(axis=0).max() for k in range(3))
    centroids = np.array([coords[labels == k].mean(axis=0) for k in range(3)])
    gaps = [np.linalg.norm(centroids[i] - centroids[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 3 * spread, (gaps, spread)


def test_projection_of_large_sets_uses_pca() -> None:
    coords, method = project_2d(np.random.default_rng(0).normal(size=(1500, 4)))
    assert coords.shape == (1500, 2) and method == "PCA"


def test_projection_of_too_few_rows_does_not_fail() -> None:
    coords, _ = project_2d(np.zeros((2, 8)))
    assert coords.shape == (2, 2)


def test_embedding_of_a_late_fusion_head_joins_every_blocks_view(fused) -> None:
    """Late fusion has one output layer per block; its embedding is their inputs side by side."""
    _, meta, test = fused
    fusion = FusionConfig.model_validate({"head": "late", "hidden": 8, "dropout": 0.0})
    head = build_head(fusion, dict(meta.in_dims), meta.out_dim).eval()
    assert fused_embedding(head, meta, test).shape == (len(test.ids), 8 * len(meta.in_dims))
