"""bench/heads.py on a tiny synthetic dataset: the report has what the issue asks for."""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import ModuleType

import pytest

from tasks.config import TrainConfig
from tests.bench_module import load_bench
from tests.tasks.train.test_training import synthetic
from tests.threads import torch_threads

TINY = TrainConfig(epochs=3, lr=3e-3, batch_size=64, patience=3, device="cpu")
FUSION = {"head": "concat", "hidden": 16, "dropout": 0.0}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("heads")


def test_a_head_entry_has_metric_spread_time_and_loop_ratio(bench: ModuleType) -> None:
    dataset = bench.Dataset("tiny/binary", "binary", synthetic("binary", n_rows=300))
    entry = bench.bench_head(dataset, "late", FUSION, TINY, seeds=[0, 1], baselines=False)
    assert len(entry["scores"]) == 2 and entry["mean"] == pytest.approx(sum(entry["scores"]) / 2)
    assert entry["std"] >= 0 and entry["train_seconds"] > 0 and entry["epochs"] >= 1
    assert math.isfinite(entry["loop_ratio"]) and entry["loop_ratio"] > 0


def test_baselines_compare_in_the_metrics_direction(bench: ModuleType) -> None:
    dataset = bench.Dataset("tiny/regression", "regression", synthetic("regression", n_rows=300))
    entry = bench.bench_head(dataset, "concat", FUSION, TINY, seeds=[0], baselines=True)
    assert set(entry["baselines"]) == {"tabular", "text"}
    assert entry["best_single"] == min(entry["baselines"].values())  # rmse: lower is better
    assert entry["beats_best_single"] == (entry["mean"] < entry["best_single"])
