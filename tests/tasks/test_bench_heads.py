"""bench/heads.py on a tiny synthetic dataset: the report has what the issue asks for."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tasks.config import TrainConfig
from tests.tasks.test_training import synthetic
from tests.threads import torch_threads

BENCH = Path(__file__).resolve().parents[2] / "bench" / "heads.py"
TINY = TrainConfig(epochs=3, lr=3e-3, batch_size=64, patience=3, device="cpu")
FUSION = {"head": "concat", "hidden": 16, "dropout": 0.0}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_heads", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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
