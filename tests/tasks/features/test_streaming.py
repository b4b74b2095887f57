"""Training and prediction from memory-mapped feature files give what the in-memory path gives.

The mapped path (tasks/features/mapped.py) is what train and evaluate use; the in-memory one
(`read_blocks`) is the reference. Same rows, same order, same kernels: the metrics must agree
to 1e-6 on CPU, and loading must not copy the blocks into memory.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.config import FusionConfig, TrainConfig
from tasks.features.feature_store import write_blocks
from tasks.features.mapped import mapped_blocks
from tasks.paths import Layout
from tasks.schema import ID, SPLIT, TARGET
from tasks.scores.metrics import compute_metrics
from tasks.train.assemble import load_feature_set
from tasks.train.training import predict, train_model
from tests.threads import torch_threads

ROWS = 3000
TRAIN = TrainConfig(epochs=4, lr=3e-3, batch_size=128, patience=4, seed=0, device="cpu", modality_dropout=0.2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def write_project(root: Path, rows: int = ROWS, text_dim: int = 32, dtype: type = np.float32) -> Layout:
    """An aligned table and two feature files (tabular; text with absent cells) under `root`."""
    rng = np.random.default_rng(0)
    layout = Layout(root)
    ids = np.array([f"r{i:06d}" for i in range(rows)], dtype=object)
    tabular = rng.normal(size=(rows, 5)).astype(np.float32)
    text = rng.normal(size=(rows, text_dim)).astype(np.float32)
    text_present = rng.random(rows) > 0.2
    text[~text_present] = 0.0
    signal = tabular[:, 0] + text[:, :3].sum(axis=1) + 0.5 * rng.normal(size=rows)
    split = np.array(["train", "val", "test"])[rng.choice(3, size=rows, p=[0.7, 0.15, 0.15])]
    layout.aligned.parent.mkdir(parents=True)
    pd.DataFrame({ID: ids, SPLIT: split, TARGET: (signal > 0).astype(int).astype(str)}).to_parquet(
        layout.aligned
    )
    layout.features.mkdir(parents=True)
    write_blocks(
        layout.feature_file("tabular"), ids, {"tabular": tabular}, {"tabular": np.ones(rows, bool)}, {}
    )
    write_blocks(
        layout.feature_file("text"),
        ids,
        {"text.title": text.astype(dtype)},
        {"text.title": text_present},
        {"encoder": {"dim": text_dim}},
        dtype=np.dtype(dtype).name,
    )
    return layout


@pytest.mark.parametrize("head", ["concat", "wide_deep"])
def test_mapped_training_matches_in_memory_training(tmp_path: Path, head: str) -> None:
    layout = write_project(tmp_path / "project")
    in_memory = load_feature_set(layout, "binary")
    mapped = load_feature_set(layout, "binary", mapped=tmp_path / "mapped")
    assert isinstance(mapped.inputs["text.title"], np.memmap)  # really read from the file, not loaded
    assert not isinstance(in_memory.inputs["text.title"], np.memmap)

    fusion = FusionConfig.model_validate({"head": head, "hidden": 16, "dropout": 0.1})
    results = [train_model(f, "binary", fusion, TRAIN, progress=False) for f in (in_memory, mapped)]
    assert [h["val_loss"] for h in results[0].history] == pytest.approx(
        [h["val_loss"] for h in results[1].history], abs=1e-6
    )
    test_rows = in_memory.split == "test"
    scores = []
    for result, features in zip(results, (in_memory, mapped), strict=True):
        predicted = predict(result.model, features, "binary", None)
        scores.append(
            (predicted, compute_metrics("binary", features.target[test_rows], predicted[test_rows]))
        )
    np.testing.assert_allclose(scores[0][0], scores[1][0], atol=1e-6)
    for name, value in scores[0][1].items():
        assert scores[1][1][name] == pytest.approx(value, abs=1e-6), name


def test_loading_and_training_do_not_copy_the_blocks(tmp_path: Path) -> None:
    """Python-side allocations stay far below the blocks' size: no split or table copy."""
    layout = write_project(tmp_path / "project", rows=20_000, text_dim=256)  # text block: 20 MB
    block_bytes = 20_000 * 256 * 4
    load_feature_set(layout, "binary", mapped=tmp_path / "mapped")  # decode once, outside the count
    tracemalloc.start()
    try:
        features = load_feature_set(layout, "binary", mapped=tmp_path / "mapped")
        fusion = FusionConfig.model_validate({"head": "concat", "hidden": 16, "dropout": 0.0})
        train_model(features, "binary", fusion, TRAIN.model_copy(update={"epochs": 1}), progress=False)
        predict_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert predict_peak < block_bytes / 4, (
        f"{predict_peak / 1e6:.1f} MB allocated for {block_bytes / 1e6:.0f} MB of blocks"
    )


def test_float16_blocks_stay_float16_until_the_batch(tmp_path: Path) -> None:
    """cache.dtype float16 halves the mapped bytes; training reads them as float32 per batch."""
    full = write_project(tmp_path / "full")
    half = write_project(tmp_path / "half", dtype=np.float16)
    assert half.feature_file("text").stat().st_size < 0.7 * full.feature_file("text").stat().st_size
    features = load_feature_set(half, "binary", mapped=tmp_path / "mapped")
    assert features.inputs["text.title"].dtype == np.float16
    fusion = FusionConfig.model_validate({"head": "concat", "hidden": 16, "dropout": 0.0})
    results = [
        train_model(load_feature_set(full, "binary"), "binary", fusion, TRAIN, progress=False),
        train_model(features, "binary", fusion, TRAIN, progress=False),
    ]
    full_pred = predict(results[0].model, load_feature_set(full, "binary"), "binary", None)
    half_pred = predict(results[1].model, features, "binary", None)
    assert np.abs(full_pred - half_pred).max() < 0.02  # rounding, not a different model


def test_decoded_copies_follow_the_feature_file(tmp_path: Path) -> None:
    """A rewritten feature file gets a fresh decoded copy and the old one is removed."""
    layout = write_project(tmp_path / "project")
    root = tmp_path / "mapped"
    first = mapped_blocks(layout.feature_file("text"), root)[1]["text.title"]
    copies = sorted(p.name for p in root.iterdir())
    assert len(copies) == 1 and not any(name.startswith(".") for name in copies)  # no temp dir left
    rows = len(first)
    ids = np.array([f"r{i:06d}" for i in range(rows)], dtype=object)
    write_blocks(
        layout.feature_file("text"),
        ids,
        {"text.title": np.ones((rows, 32), np.float32)},
        {"text.title": np.ones(rows, bool)},
        {},
    )
    os.utime(layout.feature_file("text"), ns=(1, 1))  # even an unchanged mtime would differ in size or inode
    second = mapped_blocks(layout.feature_file("text"), root)[1]["text.title"]
    assert float(second[0, 0]) == 1.0
    assert len(list(root.iterdir())) == 1 and sorted(p.name for p in root.iterdir()) != copies


def test_a_decoded_copy_that_cannot_be_written_falls_back_to_memory(tmp_path: Path) -> None:
    """The copy is a memo: a full disk or an unwritable cache costs memory, never the run."""
    layout = write_project(tmp_path / "project")
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    features = load_feature_set(layout, "binary", mapped=blocked)
    reference = load_feature_set(layout, "binary")
    assert not isinstance(features.inputs["text.title"], np.memmap)
    np.testing.assert_array_equal(features.inputs["text.title"], reference.inputs["text.title"])


def test_the_members_subflow_records_the_features_without_copying_them(tmp_path: Path) -> None:
    """Prefect stores subflow parameters; a plain dataclass would be deep-copied (asdict) first."""
    from flows._runtime import Unstored
    from flows.train import train_members

    layout = write_project(tmp_path / "project", rows=20_000, text_dim=256)  # text block: 20 MB
    features = load_feature_set(layout, "binary")
    train_members.serialize_parameters({"warm": 1})  # Prefect imports its encoder on first use
    tracemalloc.start()
    try:
        stored = train_members.serialize_parameters({"features": Unstored(features)})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stored == {"features": "<Unstored>"}
    assert peak < 2_000_000, f"{peak / 1e6:.1f} MB to record a parameter"
