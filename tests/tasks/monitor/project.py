"""A tiny monitored project on real files: source CSV, params.yaml, data/aligned and model bundles.

Everything goes through production code (ingest and align via the monitor's own
`batch_from_sources`, `write_lineage`, `write_bundle`, `promote`); the only shortcut is the
model itself: a concat head over the tabular block, initialised but not trained (its
predictions are what the monitor compares, not what it is judged on), so a bundle costs
milliseconds instead of a training run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from modelzoo.registry import lookup
from tasks.config import Params, load_params
from tasks.features.tabular import fit_tabular
from tasks.monitor.rows import batch_from_sources
from tasks.paths import Layout
from tasks.schema import SPLIT
from tasks.train.bundle import BundleMeta, write_bundle
from tasks.train.lineage import write_lineage

COLUMNS = {"numeric": ["price"], "categorical": ["category"]}
FUSION = {"head": "concat", "hidden": 4, "dropout": 0.0}


def items(rows: int, start: int = 0, shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Rows `start`.. of a two-column catalogue; `shift` moves price by that many standard deviations.

    score, colour and kind are spare columns the schema-change tests declare (kind copies category).
    """
    rng = np.random.default_rng(seed)
    price = rng.normal(100.0, 10.0, rows) + 10.0 * shift
    category = rng.choice(["kitchen", "office", "garden"], rows)
    return pd.DataFrame(
        {
            "item_id": [f"id-{i:06d}" for i in range(start, start + rows)],
            "label": np.where(rng.random(rows) < 0.4, "yes", "no"),
            "price": price.round(2),
            "category": category,
            "score": rng.normal(size=rows).round(3),
            "colour": rng.choice(["red", "blue"], rows),
            "kind": category,
        }
    )


def write_project(
    root: Path, sources: pd.DataFrame, columns: dict[str, list[str]] | None = None, split_seed: int = 3
) -> Params:
    """items.csv and params.yaml (a stable hash split, the given column roles) under `root`."""
    sources.to_csv(root / "items.csv", index=False)
    params: dict[str, Any] = {
        "data": {
            "sources": [{"path": "items.csv"}],
            "id": "item_id",
            "target": "label",
            "task": "binary",
            "columns": columns or COLUMNS,
            "split": {"method": "hash", "seed": split_seed},
        },
        "cache": {"dir": ".cache/features"},
        "schedule": {"registry": "registry"},
        "monitor": {"output": "reports/monitor"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return load_params(root / "params.yaml")


def run_align(root: Path, params: Params) -> pd.DataFrame:
    """What `dvc repro`'s ingest and align stages leave in data/aligned (the sources as they are now)."""
    aligned = batch_from_sources(params.data)
    path = Layout(root).aligned
    path.parent.mkdir(parents=True, exist_ok=True)
    aligned.to_parquet(path, index=False)
    return aligned


def write_model(
    directory: Path,
    aligned: pd.DataFrame,
    params: Params,
    seed: int = 0,
    fitted: tuple[str, ...] = ("train",),
) -> Path:
    """A bundle "trained" on `aligned` as flows/train.py writes one: fused head, lineage, metadata."""
    columns = params.data.columns
    state = fit_tabular(aligned[aligned[SPLIT] == "train"], columns.categorical, columns.numeric)
    head_cls = lookup("head", "concat")
    torch.manual_seed(seed)
    head = head_cls({"tabular": state.width}, 1, head_cls.Config(hidden=4, dropout=0.0))
    directory.mkdir(parents=True, exist_ok=True)
    lineage = write_lineage(directory, aligned, params.data.split, fitted)
    meta = BundleMeta(
        task="binary", fusion=dict(FUSION), in_dims={"tabular": state.width}, out_dim=1,
        classes=("no", "yes"), target_scaling=None, encoders={}, tabular=state.to_json(), best_epoch=1,
        params=params.model_dump(mode="json"), lineage=lineage,
    )  # fmt: skip
    write_bundle(directory, head, meta)
    return directory
