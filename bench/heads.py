"""Benchmark every registered fusion head on cached features: quality, time and loop overhead.

    python bench/heads.py [--json] [--seeds 3] [--heads concat,late] [--datasets demo,flipkart]
                          [--baselines binary|demo|all|none] [--threads N] [--out report.json]

`--datasets` takes dataset names (demo, flipkart, pokemon) or single variants (demo/binary);
`--out` rewrites the JSON report after every head, so a long run keeps what it finished.

Datasets (features are never recomputed per head):
  demo      the features `make demo` left in data/features (binary label), trained as three
            task variants: binary `label`, multiclass `label_multiclass` (score quartiles)
            and regression `score`, whose values come from tasks.data.demo.demo_targets for the
            same rows and seed (no re-extraction: the features do not depend on the target).
  flipkart  ../shared/data/flipkart_products, multiclass category_l1 (skipped when absent)
  pokemon   ../shared/data/pokemon/pokemon_unique.csv, multiclass type1 (skipped when absent)
  The shared datasets are ingested, aligned and encoded once by the pipeline's own flows
  into .cache/bench/<name>/ (git-ignored) and reused afterwards.

Per dataset and head: the primary test metric's mean and std over the seeds, the same head
trained on each single modality (mean; `--baselines`), train seconds, epochs, and
`loop_ratio`: samples/s of tasks.train.training's loop (validation, early stopping, schedule and
all) divided by samples/s of a bare in-memory PyTorch loop (shuffle, index_select, forward,
backward, step, then a forward pass over val as early stopping needs, with the same
deterministic kernels) for the same head, data and batch size, run right after it in the same
process for min(epochs, 5) epochs (enough for a stable rate). The CPU may be shared, so
absolute seconds are noisy: both rates are the best of their per-seed measurements (other
processes only ever slow a run down), taken back to back in one process. `--threads` sets
torch's intra-op threads for both loops; on a loaded 2-core machine use `--threads 1`, since
two threads contending with other processes stall at random and the ratio measures the load
(the demo's epochs last milliseconds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from modelzoo.registry import names
from tasks.atomic import write_json
from tasks.config import FusionConfig, TrainConfig, load_params, params_from_dict
from tasks.data.demo import demo_targets
from tasks.device import use_all_cores
from tasks.features.wide import wide_blocks
from tasks.paths import Layout
from tasks.scores.metrics import PRIMARY_METRIC, compute_metrics, higher_is_better
from tasks.train.assemble import load_feature_set
from tasks.train.dataset import FeatureSet, modality_of
from tasks.train.objectives import Objective
from tasks.train.training import (
    build_head,
    fit_target_scaling,
    head_features,
    output_dim,
    predict,
    train_model,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CACHE = REPO / ".cache" / "bench"  # git-ignored: encoded shared datasets
BARE_EPOCHS = 5


@dataclass(frozen=True)
class Dataset:
    name: str
    task: str
    features: FeatureSet


# --- datasets -----------------------------------------------------------------------------


def demo_datasets(root: Path) -> list[Dataset]:
    """The demo features under three targets: binary, multiclass and regression."""
    layout = Layout(root)
    params = load_params(root / "params.yaml")
    if not layout.feature_file("image").exists() or params.data.demo is None:
        raise SystemExit(f"no demo features under {layout.features}; run `make demo` first")
    binary = with_wide_blocks(load_feature_set(layout, "binary"), layout, root / "params.yaml")
    targets = pd.DataFrame(demo_targets(params.data.demo.rows, params.data.demo.seed)).set_index("item_id")
    rows = targets.loc[binary.ids]
    if not np.array_equal(rows["label"].to_numpy(), binary.target.astype(np.int64)):
        raise SystemExit("data/features do not belong to the demo in params.yaml; rerun `make demo`")
    multiclass = retarget(binary, rows["label_multiclass"].to_numpy(np.int64), ("0", "1", "2", "3"))
    regression = retarget(binary, rows["score"].to_numpy(np.float32), ())
    return [
        Dataset("demo/binary", "binary", binary),
        Dataset("demo/multiclass", "multiclass", multiclass),
        Dataset("demo/regression", "regression", regression),
    ]


def rounded_to_float16(features: FeatureSet) -> FeatureSet:
    """The embedding blocks as a float16 feature file holds them; tabular and hashed ids stay float32."""
    inputs = {
        name: block if modality_of(name) == "tabular" or name.endswith(".__wide__") else
        block.astype(np.float16).astype(np.float32)
        for name, block in features.inputs.items()
    }  # fmt: skip
    return replace(features, inputs=inputs)


def retarget(features: FeatureSet, target: np.ndarray, classes: tuple[str, ...]) -> FeatureSet:
    return FeatureSet(features.ids, features.split, target, features.inputs, features.present, classes)


def with_wide_blocks(features: FeatureSet, layout: Layout, params_path: Path) -> FeatureSet:
    """Add the hashed wide blocks when the cached features predate them (extract adds them now)."""
    if any(name.endswith(".__wide__") for name in features.inputs):
        return features
    aligned = pd.read_parquet(layout.aligned)
    blocks, present, _ = wide_blocks(aligned, load_params(params_path))
    order = pd.Index(aligned["row_id"].astype(str)).get_indexer(pd.Index(features.ids))
    return FeatureSet(
        features.ids,
        features.split,
        features.target,
        {**features.inputs, **{k: v[order] for k, v in blocks.items()}},
        {**features.present, **{k: v[order] for k, v in present.items()}},
        features.classes,
    )


SHARED_SPECS: dict[str, dict[str, Any]] = {
    "flipkart": {
        "sources": [{"path": str(SHARED / "flipkart_products" / "flipkart_products.csv")}],
        "id": "uniq_id",
        "target": "category_l1",
        "task": "multiclass",
        "columns": {
            "categorical": ["brand", "spec_color", "spec_material", "spec_type", "spec_ideal_for",
                            "is_FK_Advantage_product"],
            "numeric": ["retail_price", "discounted_price", "discount_pct", "n_spec_fields",
                        "product_rating", "overall_rating"],
            "text": ["description"],
            "image": ["image_path"],
        },
        "image_root": str(SHARED / "flipkart_products"),
    },
    "pokemon": {
        "sources": [{"path": str(SHARED / "pokemon" / "pokemon_unique.csv")}],
        "id": "name",
        "target": "type1",
        "task": "multiclass",
        "columns": {
            "categorical": ["generation", "growth_rate", "color", "shape", "habitat", "is_baby",
                            "has_prevolution"],
            "numeric": ["hp", "attack", "defense", "special_attack", "special_defense", "speed",
                        "base_total", "height_dm", "weight_hg", "base_experience", "capture_rate",
                        "base_happiness", "hatch_counter"],
            "text": ["description", "genus", "abilities"],
            "image": ["image_path"],
        },
        "image_root": str(SHARED / "pokemon"),
    },
}  # fmt: skip


def shared_dataset(name: str) -> Dataset | None:
    """A dataset from ../shared/data, encoded once by the pipeline's flows; None when absent."""
    spec = SHARED_SPECS[name]
    if not Path(spec["sources"][0]["path"]).exists():
        return None
    repo_params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = {**repo_params, "data": {**spec, "split": {"seed": 42}, "demo": None}}
    params_from_dict(params)  # fail here, not inside a flow
    workdir = CACHE / name
    stamp = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    stamp_file = workdir / "params.sha256"
    if not (stamp_file.exists() and stamp_file.read_text() == stamp):
        encode_with_flows(workdir, params)
        stamp_file.write_text(stamp)
    features = load_feature_set(Layout(workdir), spec["task"])
    return Dataset(f"{name}/{spec['task']}", spec["task"], features)


def encode_with_flows(workdir: Path, params: dict) -> None:
    """ingest -> align -> extract, exactly as `dvc repro` runs them, inside `workdir`."""
    from flows.align import align_flow
    from flows.extract import extract
    from flows.ingest import ingest

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        ingest(params_path="params.yaml")
        align_flow(params_path="params.yaml")
        extract(params_path="params.yaml")
    finally:
        os.chdir(previous)


# --- training -----------------------------------------------------------------------------


def primary_score(dataset: Dataset, fusion: FusionConfig, train: TrainConfig) -> tuple[float, Any]:
    """(test primary metric, TrainResult) of one head on one dataset and seed."""
    result = train_model(dataset.features, dataset.task, fusion, train, progress=False)
    test = head_features(dataset.features.of_split("test"), fusion.head)  # the blocks it trained on
    prediction = predict(result.model, test, dataset.task, result.target_scaling)
    return compute_metrics(dataset.task, test.target, prediction)[PRIMARY_METRIC[dataset.task]], result


def bare_loop_seconds(dataset: Dataset, fusion: FusionConfig, train: TrainConfig, epochs: int) -> float:
    """Seconds of a bare in-memory loop: the floor any training loop for this head could reach.

    It does the work an epoch of ours must do and nothing else: a shuffled pass with
    backward and step over the train rows, then a forward pass over the val rows (early
    stopping needs the val loss), under the same deterministic-kernels setting on CPU.
    """
    features = head_features(dataset.features, fusion.head)
    rows, val = features.of_split("train"), features.of_split("val")
    torch.manual_seed(train.seed)
    in_dims = {name: int(block.shape[1]) for name, block in sorted(rows.inputs.items())}
    model = build_head(fusion, in_dims, output_dim(dataset.task, features))
    scaling = fit_target_scaling(rows.target) if dataset.task == "regression" else None
    inputs, present, target = _tensors(rows, dataset.task, scaling)
    val_inputs, val_present, val_target = _tensors(val, dataset.task, scaling)
    loss_fn = Objective(dataset.task).loss
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    generator = torch.Generator().manual_seed(train.seed)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # as tasks.train.training does on CPU
    try:
        started = time.perf_counter()
        for _ in range(epochs):
            model.train()
            for index in torch.randperm(len(rows.ids), generator=generator).split(train.batch_size):
                batch = {k: v.index_select(0, index) for k, v in inputs.items()}
                mask = {k: v.index_select(0, index) for k, v in present.items()}
                loss = loss_fn(model(batch, mask).float(), target.index_select(0, index))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                for index in torch.arange(len(val.ids)).split(train.batch_size):
                    batch = {k: v.index_select(0, index) for k, v in val_inputs.items()}
                    mask = {k: v.index_select(0, index) for k, v in val_present.items()}
                    loss_fn(model(batch, mask).float(), val_target.index_select(0, index))
        return time.perf_counter() - started
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _tensors(
    rows: FeatureSet, task: str, scaling: Any
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    inputs = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in rows.inputs.items()}
    present = {k: torch.as_tensor(v, dtype=torch.bool) for k, v in rows.present.items()}
    if task == "multiclass":
        return inputs, present, torch.as_tensor(rows.target, dtype=torch.int64)
    target = torch.as_tensor(rows.target, dtype=torch.float32)
    return inputs, present, scaling.apply(target) if scaling is not None else target


def bench_head(
    dataset: Dataset, head: str, fusion_base: dict, train_base: TrainConfig, seeds: list[int], baselines: bool
) -> dict[str, Any]:
    """Metric, seconds and loop ratio of one head on one dataset (+ single-modality baselines)."""
    fusion = FusionConfig.model_validate({**fusion_base, "head": head})
    scores, seconds, epochs, ours, bare_rates = [], [], [], [], []
    for seed in seeds:
        train = train_base.model_copy(update={"seed": seed})
        score, result = primary_score(dataset, fusion, train)
        bare_epochs = min(len(result.history), BARE_EPOCHS)
        bare = bare_loop_seconds(dataset, fusion, train, bare_epochs)
        scores.append(score)
        seconds.append(result.train_seconds)
        epochs.append(len(result.history))
        ours.append(len(result.history) / result.train_seconds)  # epochs/s: x train rows = samples/s
        bare_rates.append(bare_epochs / bare)
    entry: dict[str, Any] = {
        "mean": statistics.fmean(scores),
        "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "scores": scores,
        "train_seconds": statistics.fmean(seconds),
        "epochs": statistics.fmean(epochs),
        "loop_ratio": max(ours) / max(bare_rates),
    }
    if baselines and len(dataset.features.modalities) > 1:
        single = {}
        for modality in dataset.features.modalities:
            only = Dataset(dataset.name, dataset.task, dataset.features.only_modalities({modality}))
            single[modality] = statistics.fmean(
                primary_score(only, fusion, train_base.model_copy(update={"seed": s}))[0] for s in seeds
            )
        metric = PRIMARY_METRIC[dataset.task]
        best = max(single.values()) if higher_is_better(metric) else min(single.values())
        entry["baselines"] = single
        entry["best_single"] = best
        better = entry["mean"] > best if higher_is_better(metric) else entry["mean"] < best
        entry["beats_best_single"] = better
    return entry


# --- output -------------------------------------------------------------------------------


def print_table(report: dict) -> None:
    for name, data in report["datasets"].items():
        print(f"\n{name} ({data['primary_metric']}; rows {data['rows']})")
        header = f"{'head':<12} {'mean':>8} {'std':>7} {'best 1-mod':>10} {'train s':>8} {'epochs':>6}"
        print(f"  {header} {'loop':>6}")
        for head, r in data["heads"].items():
            best = f"{r['best_single']:.4f}" if "best_single" in r else "-"
            print(
                f"  {head:<12} {r['mean']:8.4f} {r['std']:7.4f} {best:>10} {r['train_seconds']:8.2f} "
                f"{r['epochs']:6.1f} {r['loop_ratio']:6.2f}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--heads", default=",".join(names("head")))
    parser.add_argument("--datasets", default="demo,flipkart,pokemon")
    parser.add_argument("--baselines", choices=("binary", "demo", "all", "none"), default="binary",
                        help="where to also train each head on each single modality: demo/binary, "
                        "every demo variant, every dataset, nowhere")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here, after every head")
    parser.add_argument("--root", type=Path, default=REPO, help="project root holding data/features")
    parser.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32",
        help="embeddings as stored: float16 rounds every embedding block as cache.dtype: float16 does",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        use_all_cores()
    params = load_params(args.root / "params.yaml")
    train_base = params.train.model_copy(update={"device": "cpu"})
    fusion_base = params.fusion.model_dump()
    seeds = list(range(args.seeds))
    heads = [h for h in args.heads.split(",") if h]
    wanted = [d for d in args.datasets.split(",") if d]
    sources = sorted({d.split("/")[0] for d in wanted}, key=lambda d: (d != "demo", d))
    datasets: list[Dataset] = []
    skipped = []
    for source in sources:
        if source == "demo":
            datasets += demo_datasets(args.root)
            continue
        loaded = shared_dataset(source)
        if loaded is None:
            skipped.append(source)
        else:
            datasets.append(loaded)
    datasets = [d for d in datasets if d.name in wanted or d.name.split("/")[0] in wanted]
    if args.dtype == "float16":
        datasets = [Dataset(d.name, d.task, rounded_to_float16(d.features)) for d in datasets]
    report: dict[str, Any] = {
        "note": "loop_ratio = training-loop samples/s over a bare in-memory loop's for the same head, "
        "data and batch size, measured back to back in this process (best rate of the seeds for each); "
        "seconds are wall time on a possibly shared CPU and only comparable within this run",
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": "cpu"},
        "seeds": seeds,
        "dtype": args.dtype,
        "train": train_base.model_dump(),
        "fusion": fusion_base,
        "skipped": skipped,
        "datasets": {},
    }  # fmt: skip
    started = time.perf_counter()
    for dataset in datasets:
        baselines = {
            "all": True,
            "demo": dataset.name.startswith("demo/"),
            "binary": dataset.name == "demo/binary",
            "none": False,
        }[args.baselines]
        split = dataset.features.split
        entry: dict[str, Any] = {
            "task": dataset.task,
            "primary_metric": PRIMARY_METRIC[dataset.task],
            "rows": {s: int((split == s).sum()) for s in ("train", "val", "test")},
            "heads": {},
        }
        for head in heads:
            entry["heads"][head] = bench_head(dataset, head, fusion_base, train_base, seeds, baselines)
            print(f"{dataset.name} {head}: {entry['heads'][head]['mean']:.4f}", file=sys.stderr, flush=True)
            report["datasets"][dataset.name] = entry
            if args.out:
                write_json(json.loads(json.dumps(report, default=_plain)), args.out)
    report["total_seconds"] = time.perf_counter() - started
    if args.out:
        write_json(json.loads(json.dumps(report, default=_plain)), args.out)
    if args.json:
        print(json.dumps(report, indent=2, default=_plain))
    else:
        print_table(report)


def _plain(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


if __name__ == "__main__":
    main()
