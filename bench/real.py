"""The whole pipeline on the real datasets in ../shared/data, next to the baselines a user would try.

    python bench/real.py [--json] [--datasets flipkart,pokemon,petfinder] [--presets fast,best]
                         [--workdir DIR] [--set train.combine=auto ...]

Per dataset, in a fresh working directory (a temporary one unless --workdir), this writes a
params.yaml (the repository's params.yaml with the dataset's `data:` section: default
encoders and the default `concat` head) and runs the stage flows in order, in this process:
ingest, align, extract (tabular, text, image), train, evaluate. It then reports the rows per
split, the final model's primary test metric with its 95 % bootstrap interval (the ensemble
chosen on val, `fused`), the fused head alone, the best single-modality model, the
scikit-learn baseline with the paired interval of final minus it, the fused head with each
modality masked, what the preset tried and each stage's wall time.

  flipkart  flipkart_products.csv, multiclass `category_l1` (7 balanced classes). Columns as
            the data README assigns them; product_category_tree, product_url, category_l2
            and product_name are left out: they contain the category.
  pokemon   pokemon_unique.csv, multiclass `type1` (18 classes), one row per Pokemon, so the
            split is by name: pokemon.csv repeats 409 Pokemon (the same image in each type
            folder) and would leak them across splits. type2 and the image-folder columns
            are left out (they name the type); the image *path* is never a feature, only pixels.
  petfinder petfinder.csv, multiclass `AdoptionSpeed` (5 ordered classes), text + tabular, the
            published test split (`split` column; val carved from its train rows). RescuerID
            is a group key, not a feature. Compared with the published fine-tuned BERT.

`--set KEY=VALUE` (repeatable) applies a params.yaml setting to every dataset, as `dvc exp run
-S` takes it: `--set train.combine=auto` measures stacking against the default selection
(docs/pipeline.md has that table). The JSON lists the settings it ran with.

Timing: seconds are wall time on a CPU other processes may share, so absolute numbers are
noisy; `share` is each stage's fraction of the dataset's total, measured in the same run.
Missing datasets are skipped (reported under `skipped`), never an error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the project's packages come first

from tasks.config import params_from_dict  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SPLIT_SEED = 42

DATASETS: dict[str, dict[str, Any]] = {
    "flipkart": {
        "sources": [{"path": "flipkart_products/flipkart_products.csv"}],
        "id": "uniq_id",
        "target": "category_l1",
        "task": "multiclass",
        "columns": {
            "categorical": [
                "brand", "spec_color", "spec_material", "spec_type", "spec_ideal_for",
                "is_FK_Advantage_product",
            ],
            "numeric": [
                "retail_price", "discounted_price", "discount_pct", "n_spec_fields", "product_rating",
                "overall_rating",
            ],
            "text": ["description"],
            "image": ["image_path"],
        },
        "image_root": "flipkart_products",
    },
    "pokemon": {
        "sources": [{"path": "pokemon/pokemon_unique.csv"}],
        "id": "name",
        "target": "type1",
        "task": "multiclass",
        "columns": {
            "categorical": [
                "generation", "growth_rate", "color", "shape", "habitat", "is_baby", "has_prevolution",
            ],
            "numeric": [
                "hp", "attack", "defense", "special_attack", "special_defense", "speed", "base_total",
                "height_dm", "weight_hg", "base_experience", "capture_rate", "base_happiness",
                "hatch_counter",
            ],
            "text": ["description", "genus", "abilities"],
            "image": ["image_path"],
        },
        "image_root": "pokemon",
    },
    "petfinder": {
        "sources": [{"path": "petfinder/petfinder.csv"}],
        "id": "PetID",
        "target": "AdoptionSpeed",
        "task": "multiclass",
        "columns": {
            "categorical": [
                "Type", "Breed1", "Breed2", "Gender", "Color1", "Color2", "Color3", "MaturitySize",
                "FurLength", "Vaccinated", "Dewormed", "Sterilized", "Health", "State",
            ],
            "numeric": ["Age", "Quantity", "Fee", "VideoAmt", "PhotoAmt"],
            "text": ["Description", "Name"],
        },
        "split": {"column": "split"},  # the published test split; val is carved from train
    },
}  # fmt: skip
PRESETS = ("fast", "best")
# Published on petfinder's test split (Multimodal-Toolkit, BERT fine-tuned on ~12,000 train rows)
# and scikit-learn on our 1,500 train rows (../shared/data/README.md): accuracy, macro-F1.
PETFINDER_REFERENCE = {"published_bert": [0.380, 0.275], "sklearn_readme": [0.361, 0.281]}


def dataset_params(name: str, data_root: Path, settings: list[str] | None = None) -> dict[str, Any]:
    """The repository's params.yaml with this dataset's `data:` (absolute paths) and `settings`
    (`--set`), validated."""
    spec = json.loads(json.dumps(DATASETS[name]))  # deep copy
    spec["sources"] = [{"path": str(data_root / s["path"])} for s in spec["sources"]]
    if "image_root" in spec:
        spec["image_root"] = str(data_root / spec["image_root"])
    split = {**spec.pop("split", {}), "seed": SPLIT_SEED}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = {**spec, "split": split, "demo": None}
    for setting in settings or []:
        set_param(params, setting)
    params_from_dict(params)  # a typo fails here, before minutes of extraction
    return params


def set_param(params: dict[str, Any], setting: str) -> None:
    """Apply one `KEY.PATH=VALUE` (VALUE read as YAML), as `dvc exp run -S` does, so one run can
    compare a setting (`--set train.combine=auto`) without editing the repository's params.yaml."""
    key, sep, value = setting.partition("=")
    if not sep or not key:
        raise ValueError(f"--set {setting!r}: expected KEY.PATH=VALUE, e.g. train.combine=auto")
    *parents, leaf = key.split(".")
    node = params
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {setting!r}: {part!r} is not a section")
    node[leaf] = yaml.safe_load(value)


def run_stages(workdir: Path, only: tuple[str, ...] | None = None) -> dict[str, float]:
    """Each stage flow in order (or just those in `only`), in `workdir`; wall seconds per stage."""
    from flows.align import align_flow
    from flows.evaluate import evaluate
    from flows.extract import extract
    from flows.ingest import ingest
    from flows.train import train

    stages: list[tuple[str, Callable[[], object]]] = [
        ("ingest", lambda: ingest("params.yaml")),
        ("align", lambda: align_flow("params.yaml")),
        ("extract_tabular", lambda: extract("params.yaml", modality="tabular")),
        ("extract_text", lambda: extract("params.yaml", modality="text")),
        ("extract_image", lambda: extract("params.yaml", modality="image")),
        ("train", lambda: train("params.yaml")),
        ("evaluate", lambda: evaluate("params.yaml")),
    ]
    seconds: dict[str, float] = {}
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        for name, run in stages:
            if only is not None and name not in only:
                continue
            started = time.perf_counter()
            run()
            seconds[name] = time.perf_counter() - started
    finally:
        os.chdir(previous)
    return seconds


def summarise(workdir: Path, params: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """The numbers a reader compares, taken from the evaluation.json evaluate wrote."""
    metrics = json.loads((workdir / "reports" / "evaluation.json").read_text())
    primary = metrics["primary_metric"]
    higher = metrics["intervals"]["higher_is_better"]
    intervals = metrics["intervals"]

    def scored(key: str, values: dict[str, float]) -> dict[str, Any]:
        interval = intervals.get(key, {})
        return {
            "value": _round(values[primary]),
            "ci95": [_round(interval.get("low")), _round(interval.get("high"))],
        }

    not_single = ("sklearn", "fused_head", "majority", "mean")
    singles = {k: v for k, v in metrics["baselines"].items() if k not in not_single}
    best = (max if higher else min)(singles, key=lambda k: singles[k][primary]) if singles else None
    total = sum(seconds.values())
    result: dict[str, Any] = {
        "source": params["data"]["sources"][0]["path"],
        "task": metrics["task"],
        "target": params["data"]["target"],
        "split_seed": SPLIT_SEED,
        "head": params["fusion"]["head"],
        "rows": {"total": sum(metrics["rows"].values()), **metrics["rows"]},
        "primary_metric": primary,
        "preset": params["train"].get("preset", "fast"),
        "fused": scored("fused", metrics["test"]),
        "fused_head": scored("fused_head", metrics["baselines"]["fused_head"])
        if "fused_head" in metrics["baselines"]
        else None,
        "ensemble": (metrics.get("ensemble") or {}).get("members"),
        "tried": [
            {k: t.get(k) for k in ("name", "status", "seconds", "val")}
            for t in (metrics.get("ensemble") or {}).get("tried", [])
        ],
        "best_single_modality": {"modality": best, **scored(best, singles[best])} if best else None,
        "single_modalities": {k: _round(v[primary]) for k, v in singles.items()},
        "fused_minus_best_single_ci95": _pair(intervals.get(f"fused_minus_{best}")),
        "fused_with_modality_masked": {k: _round(v[primary]) for k, v in metrics["ablation"].items()},
        "stage_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "stage_share": {k: round(v / total, 3) for k, v in seconds.items()},
        "total_seconds": round(total, 1),
    }
    if "sklearn" in metrics["baselines"]:
        result["sklearn"] = {
            "model": metrics["sklearn"]["selected"],
            **scored("sklearn", metrics["baselines"]["sklearn"]),
        }
        result["fused_minus_sklearn_ci95"] = _pair(intervals.get("fused_minus_sklearn"))
    for prior in ("majority", "mean"):  # the no-input baseline: train class frequencies or mean
        if prior in metrics["baselines"]:
            result[prior] = scored(prior, metrics["baselines"][prior])
    result["fused_all_metrics"] = {k: _round(v) for k, v in metrics["test"].items()}
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _pair(interval: dict[str, float] | None) -> list[float | None] | None:
    return [_round(interval["low"]), _round(interval["high"])] if interval else None


def bench_dataset(
    name: str, data_root: Path, workdir: Path, presets: list[str], settings: list[str] | None = None
) -> dict[str, Any]:
    """Every preset on one dataset; the later presets reuse the first one's ingest to extract."""
    params = dataset_params(name, data_root, settings)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    upstream: dict[str, float] = {}
    for preset in presets:
        params["train"]["preset"] = preset
        (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        seconds = run_stages(workdir, None if not upstream else ("train", "evaluate"))
        upstream = upstream or {k: v for k, v in seconds.items() if k not in ("train", "evaluate")}
        seconds = {**upstream, **seconds}
        results[preset] = {**summarise(workdir, params, seconds), "workdir": str(workdir)}
        if name == "petfinder":
            results[preset]["reference_accuracy_macro_f1"] = PETFINDER_REFERENCE
    return results if len(presets) > 1 else results[presets[0]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated names")
    parser.add_argument("--data-root", type=Path, default=SHARED, help="the shared data folder")
    parser.add_argument("--workdir", type=Path, default=None, help="keep each run under DIR/<dataset>")
    parser.add_argument("--presets", default="fast", help="comma-separated train.preset values: fast,best")
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
        help="a params.yaml setting for every dataset, as dvc exp run -S takes it (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for setting in args.settings:
        try:
            set_param({}, setting)  # the form only; the keys are checked with each dataset's params
        except ValueError as err:
            parser.error(str(err))
    wanted = [d for d in args.datasets.split(",") if d]
    unknown = sorted(set(wanted) - set(DATASETS))
    if unknown:
        parser.error(f"unknown datasets {unknown}; known: {', '.join(DATASETS)}")

    report: dict[str, Any] = {
        "benchmark": "bench/real.py",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "timing_note": "wall seconds on a possibly shared CPU; stage_share is within one run",
        "settings": args.settings,
        "datasets": {},
        "skipped": {},
    }
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fuseline-bench-real-"))
    for name in wanted:
        source = args.data_root / DATASETS[name]["sources"][0]["path"]
        if not source.is_file():
            report["skipped"][name] = f"{source} not found"
            continue
        presets = [p for p in args.presets.split(",") if p]
        if set(presets) - set(PRESETS):
            parser.error(f"unknown presets {presets}; known: {', '.join(PRESETS)}")
        report["datasets"][name] = bench_dataset(name, args.data_root, root / name, presets, args.settings)
        if not args.json:
            results = report["datasets"][name]
            for preset, result in results.items() if len(presets) > 1 else [(presets[0], results)]:
                _print_human(f"{name} [{preset}]", result)
    if args.json:
        print(json.dumps(report, indent=2))
    elif report["skipped"]:
        print(f"skipped: {report['skipped']}")


def _print_human(name: str, result: dict[str, Any]) -> None:
    metric = result["primary_metric"]
    best = result["best_single_modality"] or {}
    sklearn = result.get("sklearn", {})
    print(
        f"{name}: {result['rows']['total']} rows ({result['rows']['test']} test), {metric}: "
        f"fused {result['fused']['value']} {result['fused']['ci95']}, "
        f"best single {best.get('modality')} {best.get('value')}, "
        f"sklearn {sklearn.get('model')} {sklearn.get('value')}; "
        f"stages {result['stage_seconds']} s"
    )


if __name__ == "__main__":
    main()
