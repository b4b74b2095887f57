"""fuseline beside AutoGluon's TabularPredictor on bench/real.py's datasets: same split, same time, one table.

    python bench/peers.py [--json] [--datasets flipkart,pokemon,petfinder] [--presets fast,best]
                          [--time-limit SECONDS] [--rows N] [--autogluon-preset medium_quality]
                          [--workdir DIR] [--peers-python PYTHON] [--set train.refit=false ...]

Per dataset, in this one invocation: fuseline runs as bench/real.py runs it (its params, its
stages, in a working directory under --workdir or a temporary one), then AutoGluon 1.6.3
fits on exactly the rows fuseline's align stage put in each split, read back from that run's
`data/aligned/aligned.parquet`; both are scored here, by the project's metric and interval
code, on the same test rows.

  split     AutoGluon fits on train with val as `tuning_data`. fuseline fits its members on
            train and chooses on val (early stopping, epochs, ensemble weights, the baseline's
            settings); AutoGluon with tuning_data (medium_quality does not bag) does the same:
            its models fit on train, and val picks their iterations and its weighted
            ensemble. With fuseline's `train.refit` (the default) fuseline then fits its kept
            members again on train + val, and AutoGluon gets the same step, its own
            `refit_full` (every model retrained on train + val, the refit versions predict);
            with `--set train.refit=false` neither fits on a val row. Neither ever sees a test
            row.
  columns   the columns and roles fuseline's params declare (categorical, numeric, text;
            images are left out: TabularPredictor needs a pretrained model for pixels). Text
            columns are marked `text`, so AutoGluon builds its own n-gram and text-statistic
            features; `medium_quality` trains no pretrained model.
  metric    AutoGluon selects on the metric fuseline selects on (`evaluate.metric`, the task's
            default under `auto`). The table gives that metric, accuracy and macro-F1 for
            classification, each with a 95 % percentile bootstrap interval (1,000 resamples of
            the test rows, seeded as evaluate seeds it, paired across systems), and the paired
            interval of fuseline minus AutoGluon.
  time      --time-limit T sets fuseline's `train.time_limit` and AutoGluon's `time_limit` to
            T. Without it, fuseline runs with its defaults and AutoGluon's time_limit is
            fuseline's measured fit seconds (every stage before evaluate: ingest, align,
            extract, train; the slowest preset when there are several). `fit s` is wall time
            of fuseline's stages before evaluate and of AutoGluon's `fit` call.
  --rows N  a seeded sample of N source rows (classes with under 10 sampled rows dropped),
            for a quick check of the machinery, not a benchmark.

AutoGluon runs in its own virtualenv, `.cache/peers-venv`, made on first use (`python -m venv`
and `pip install` of REQUIREMENT below; a few minutes, once): AutoGluon 1.6.3 pins pandas
below 2.4 and pyarrow below 25, older than fuseline's, so installing it beside fuseline would
change fuseline's own environment. This script hands it the split as Parquet files and runs
this same file there with `--worker`; the worker imports only the standard library, pandas
and AutoGluon, and writes its test probabilities back as Parquet. `--peers-python` uses an
interpreter that already has autogluon.tabular instead. Missing datasets are skipped
(reported under `skipped`), never an error. `--json` prints one JSON line, last.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".cache" / "peers-venv"
# The models medium_quality trains (LightGBM, CatBoost, XGBoost, fastai and torch networks,
# random forests, extra trees, k-nearest neighbours) need these extras; none is a pretrained model.
REQUIREMENT = "autogluon.tabular[lightgbm,catboost,xgboost,fastai]==1.6.3"
AUTOGLUON_PRESET = "medium_quality"
ID, SPLIT, TARGET = "row_id", "split", "target"  # aligned.parquet's columns (tasks/schema.py)
SPLITS = ("train", "val", "test")
ROLES = ("categorical", "numeric", "text")  # the roles AutoGluon gets; image columns are left out
BOOTSTRAP_SEED = 0  # flows/evaluate.py's SEED: fuseline's interval here is the one its report gives
SAMPLE_SEED = 0
MIN_SAMPLED_CLASS_ROWS = 10  # align needs each class in train, val and test
# evaluate.metric -> AutoGluon's name for it, so both choose on the same thing.
AUTOGLUON_METRICS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced_accuracy",
    "f1": "f1",
    "f1_macro": "f1_macro",
    "f1_weighted": "f1_weighted",
    "quadratic_kappa": "quadratic_kappa",
    "log_loss": "log_loss",
    "auc": "roc_auc",
    "rmse": "root_mean_squared_error",
    "mae": "mean_absolute_error",
    "r2": "r2",
}
PEER = "autogluon"


@functools.cache
def real() -> ModuleType:
    """bench/real.py, loaded on demand: the worker (in AutoGluon's venv) must not import the project."""
    spec = importlib.util.spec_from_file_location("bench_real", REPO / "bench" / "real.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- fuseline's side ----------------------------------------------------------------------


def sample_source(source: Path, target: str, rows: int, out_dir: Path) -> tuple[Path, list[str]]:
    """A seeded sample of `rows` rows of a CSV source, in `out_dir` under the same name.

    Classes left with fewer than MIN_SAMPLED_CLASS_ROWS rows are dropped (returned), since
    align refuses a class it cannot put in every split. The rows keep their file order.
    """
    import pandas as pd

    frame = pd.read_csv(source)
    picked = frame.sample(n=min(rows, len(frame)), random_state=SAMPLE_SEED).sort_index()
    counts = picked[target].value_counts()
    rare = counts[counts < MIN_SAMPLED_CLASS_ROWS].index
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / source.name
    picked[~picked[target].isin(rare)].to_csv(out, index=False)
    return out, sorted(str(label) for label in rare)


def fuseline_params(
    name: str,
    data_root: Path,
    workdir: Path,
    time_limit: float | None,
    rows: int | None,
    settings: list[str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """bench/real.py's params for `name` with `settings` (`--set`), the time limit and, for
    --rows, a sampled source."""
    params = real().dataset_params(name, data_root, settings)
    if time_limit is not None:
        params["train"]["time_limit"] = float(time_limit)
    dropped: list[str] = []
    if rows is not None:
        source = Path(params["data"]["sources"][0]["path"])
        sampled, dropped = sample_source(source, params["data"]["target"], rows, workdir / "sample")
        params["data"]["sources"][0]["path"] = str(sampled)
    return params, dropped


def run_fuseline(params: dict[str, Any], workdir: Path, presets: list[str]) -> dict[str, dict[str, Any]]:
    """Each preset, as bench/real.py runs it: its summary, fit seconds and test predictions.

    Later presets reuse the first one's ingest, align and extract (their seconds count for each).
    """
    import pandas as pd
    import yaml

    bench = real()
    workdir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, Any]] = {}
    upstream: dict[str, float] = {}
    for preset in presets:
        params["train"]["preset"] = preset
        (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        seconds = bench.run_stages(workdir, ("train", "evaluate") if upstream else None)
        upstream = upstream or {k: v for k, v in seconds.items() if k not in ("train", "evaluate")}
        seconds = {**upstream, **seconds}
        runs[preset] = {
            "summary": bench.summarise(workdir, params, seconds),
            "fit_seconds": fit_seconds(seconds),
            "predictions": pd.read_parquet(workdir / "reports" / "test_predictions.parquet"),
        }
    return runs


def fit_seconds(stage_seconds: dict[str, float]) -> float:
    """What fitting cost fuseline: every stage before evaluate (AutoGluon's fit featurises too)."""
    return sum(v for k, v in stage_seconds.items() if k != "evaluate")


# --- the split, handed to AutoGluon ------------------------------------------------------------


def export_split(
    aligned_path: Path, columns: dict[str, list[str]], task: str, metric: str, out_dir: Path
) -> dict[str, Any]:
    """train/val/test Parquet files of the aligned rows (id, declared columns, target) and the spec.

    The files carry no pandas metadata and the worker types the columns by role, so the
    pandas and pyarrow of AutoGluon's venv (older than fuseline's) read them as plain values.
    Returns the spec, also written as spec.json.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    roles = {role: list(columns.get(role) or []) for role in ROLES}
    features = [c for role in ROLES for c in roles[role]]
    aligned = pd.read_parquet(aligned_path, columns=[ID, SPLIT, TARGET, *features])
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for split in SPLITS:
        part = aligned.loc[aligned[SPLIT] == split, [ID, *features, TARGET]]
        table = pa.Table.from_pandas(part, preserve_index=False).replace_schema_metadata(None)
        pq.write_table(table, out_dir / f"{split}.parquet")
        rows[split] = len(part)
    spec = {
        "label": TARGET,
        "id": ID,
        "problem_type": task,
        "eval_metric": AUTOGLUON_METRICS[metric],
        "roles": roles,
        "rows": rows,
    }
    (out_dir / "spec.json").write_text(json.dumps(spec, indent=2))
    return spec


# --- AutoGluon's side ---------------------------------------------------------------------------


def peers_python(venv: Path = VENV) -> Path:
    """The interpreter of AutoGluon's own virtualenv, made (or finished) on first use.

    A marker file holds the requirement it was installed for: a changed REQUIREMENT, or an
    install cut short, installs again (pip skips what is already there).
    """
    python = venv / "bin" / "python"
    marker = venv / ".peers-requirement"
    if python.exists() and marker.is_file() and marker.read_text().strip() == REQUIREMENT:
        return python
    if not python.exists():
        print(f"peers: creating {venv} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(f"peers: pip install {REQUIREMENT} into {venv} (once; a few minutes)", file=sys.stderr)
    subprocess.run(
        [str(python), "-m", "pip", "install", REQUIREMENT], check=True, stdout=sys.stderr, env=clean_env()
    )
    marker.write_text(REQUIREMENT + "\n")
    return python


def clean_env() -> dict[str, str]:
    """This environment without what would point AutoGluon's interpreter at fuseline's packages."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def run_autogluon(
    python: Path, split_dir: Path, time_limit: int, preset: str, refit_full: bool = False
) -> dict[str, Any]:
    """Fit AutoGluon in its venv on the exported split (then refit on train + val with
    `refit_full`, as fuseline's `train.refit`); its result and test predictions."""
    import pandas as pd

    spec = json.loads((split_dir / "spec.json").read_text())
    spec |= {"time_limit": time_limit, "presets": preset, "refit_full": refit_full}
    (split_dir / "spec.json").write_text(json.dumps(spec, indent=2))
    shutil.rmtree(split_dir / "autogluon", ignore_errors=True)  # a rerun in the same --workdir
    started = time.perf_counter()
    subprocess.run(
        [str(python), str(Path(__file__).resolve()), "--worker", str(split_dir)],
        check=True,
        stdout=sys.stderr,  # its log must not mix with the --json line on stdout
        env=clean_env(),
    )
    result = json.loads((split_dir / "result.json").read_text())
    result["process_seconds"] = time.perf_counter() - started
    result["predictions"] = pd.read_parquet(split_dir / "predictions.parquet")
    return result


def autogluon_worker(split_dir: Path) -> None:
    """In AutoGluon's venv: fit on train (val as tuning_data), predict test, write the results."""
    import pandas as pd
    from autogluon.common.features.feature_metadata import FeatureMetadata
    from autogluon.tabular import TabularPredictor, __version__

    spec = json.loads((split_dir / "spec.json").read_text())
    label, roles = spec["label"], spec["roles"]
    frames = typed({split: pd.read_parquet(split_dir / f"{split}.parquet") for split in SPLITS}, roles)
    ids = {split: frames[split].pop(spec["id"]) for split in SPLITS}
    metadata = FeatureMetadata.from_df(frames["train"].drop(columns=[label]))
    metadata = metadata.add_special_types({column: ["text"] for column in roles["text"]})
    predictor = TabularPredictor(
        label=label,
        problem_type=spec["problem_type"],
        eval_metric=spec["eval_metric"],
        path=str(split_dir / "autogluon"),
        verbosity=2,
    )
    started = time.perf_counter()
    predictor.fit(
        frames["train"],
        tuning_data=frames["val"],
        presets=spec["presets"],
        time_limit=spec["time_limit"],
        feature_metadata=metadata,
    )
    if spec.get("refit_full"):  # retrain on train + val; predict() then uses the refit models
        predictor.refit_full(model="all", set_best_to_refit_full=True)
    fit_seconds = time.perf_counter() - started
    test = frames["test"].drop(columns=[label])
    if spec["problem_type"] == "regression":
        predictions = pd.DataFrame({"prediction": predictor.predict(test).to_numpy()})
    else:
        predictions = predictor.predict_proba(test).reset_index(drop=True)
        predictions.columns = [str(c) for c in predictions.columns]
    predictions.insert(0, spec["id"], ids["test"].to_numpy())
    predictions.to_parquet(split_dir / "predictions.parquet", index=False)
    board = predictor.leaderboard(silent=True)
    result = {
        "version": __version__,
        "fit_seconds": fit_seconds,
        "best_model": predictor.model_best,
        "models": [
            {"model": r["model"], "score_val": _finite(r["score_val"]), "fit_time": _finite(r["fit_time"])}
            for r in board.to_dict("records")
        ],
    }
    (split_dir / "result.json").write_text(json.dumps(result, indent=2))


def typed(frames: dict[str, Any], roles: dict[str, list[str]]) -> dict[str, Any]:
    """The declared roles as AutoGluon reads them: categories, floats and text (object).

    Each categorical column gets one category set in every split, the values of train and
    val (what AutoGluon fits on; it fits its features on both together, and two category
    sets would make the joined column plain objects). A test value neither had is missing,
    as fuseline puts it in its `unknown` slot.
    """
    import pandas as pd

    for column in roles["categorical"]:
        seen = pd.concat([frames["train"][column], frames["val"][column]]).dropna().unique()
        dtype = pd.CategoricalDtype(sorted(str(v) for v in seen))
        for frame in frames.values():
            frame[column] = frame[column].astype(dtype)
    for frame in frames.values():
        for column in roles["numeric"]:
            frame[column] = frame[column].astype("float64")
        for column in roles["text"]:
            frame[column] = frame[column].astype("object")
    return frames


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


# --- scoring both on the same rows ----------------------------------------------------------------


def prediction_arrays(task: str, target: Any, fused: Any, peer: Any) -> tuple[Any, dict[str, Any]]:
    """y_true and each system's predictions, in fuseline's test row order and class order.

    `target`: the aligned target by row id; `fused`: fuseline's test_predictions.parquet
    (row_id, prob_<class> ..., prediction); `peer`: AutoGluon's (row_id, one column per
    class, or `prediction` for regression). A class AutoGluon never predicts gets 0.
    """
    import numpy as np

    order = fused[ID].astype(str).to_numpy()
    truth = target.reindex(order)
    peer = peer.assign(**{ID: peer[ID].astype(str)}).set_index(ID).reindex(order)
    if peer.isna().all(axis=1).any():
        raise ValueError("AutoGluon's predictions miss some of fuseline's test rows")
    if task == "regression":
        return truth.to_numpy(np.float64), {
            "fused": fused["prediction"].to_numpy(np.float64),
            PEER: peer["prediction"].to_numpy(np.float64),
        }
    classes = [c.removeprefix("prob_") for c in fused.columns if c.startswith("prob_")]
    if task == "binary":  # fuseline keeps P(the second class) only
        positive = classes[-1]
        return (truth.astype(str) == positive).to_numpy(np.int64), {
            "fused": fused[f"prob_{positive}"].to_numpy(np.float64),
            PEER: peer[positive].to_numpy(np.float64),
        }
    index = {label: i for i, label in enumerate(classes)}
    return truth.astype(str).map(index).to_numpy(np.int64), {
        "fused": fused[[f"prob_{c}" for c in classes]].to_numpy(np.float64),
        PEER: peer.reindex(columns=classes).fillna(0.0).to_numpy(np.float64),
    }


def reported_metrics(task: str, primary: str) -> list[str]:
    """The selection metric first, then accuracy and macro-F1 for classification."""
    extra = ["accuracy", "f1_macro"] if task in ("binary", "multiclass") else []
    return list(dict.fromkeys([primary, *extra]))


def side_by_side(
    task: str, primary: str, y_true: Any, fused: Any, peer: Any, resamples: int = 1000
) -> dict[str, Any]:
    """Each reported metric of both systems with its interval, and the paired fused-minus-peer one."""
    from tasks.evaluate.evaluation import bootstrap_intervals
    from tasks.scores.metrics import compute_metrics

    predictions = {"fused": fused, PEER: peer}
    values = {name: compute_metrics(task, y_true, pred, primary) for name, pred in predictions.items()}
    scored: dict[str, Any] = {"fused": {}, PEER: {}, f"fused_minus_{PEER}": {}}
    for metric in reported_metrics(task, primary):
        intervals = bootstrap_intervals(
            task, y_true, predictions, resamples, seed=BOOTSTRAP_SEED, metric=metric
        )
        for name in predictions:
            scored[name][metric] = {"value": _round(values[name][metric]), "ci95": _pair(intervals[name])}
        difference = values["fused"][metric] - values[PEER][metric]
        scored[f"fused_minus_{PEER}"][metric] = {
            "value": _round(difference),
            "ci95": _pair(intervals[f"fused_minus_{PEER}"]),
        }
    return scored


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def _pair(interval: dict[str, float]) -> list[float | None]:
    return [_round(interval["low"]), _round(interval["high"])]


# --- one dataset, the table ---------------------------------------------------------------------


def bench_dataset(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """fuseline (each preset) then AutoGluon on the same split; the dataset's report entry."""
    workdir = root / name
    params, dropped = fuseline_params(name, args.data_root, workdir, args.time_limit, args.rows, args.set)
    runs = run_fuseline(params, workdir, [p for p in args.presets.split(",") if p])
    first = next(iter(runs.values()))["summary"]
    budget = math.ceil(args.time_limit or max(run["fit_seconds"] for run in runs.values()))
    aligned = workdir / "data" / "aligned" / "aligned.parquet"
    spec = export_split(
        aligned, params["data"]["columns"], first["task"], first["primary_metric"], workdir / "peers"
    )
    python = args.peers_python or peers_python()
    refit = bool(params["train"].get("refit", True))  # fuseline's TrainConfig default
    peer = run_autogluon(python, workdir / "peers", budget, args.autogluon_preset, refit)
    entry = dataset_entry(runs, peer, aligned, spec)
    entry["autogluon"]["preset"] = args.autogluon_preset
    entry["autogluon"]["refit_full"] = refit
    return {
        **entry,
        "time_budget_seconds": budget,
        "sampled_rows": args.rows,
        "classes_dropped_by_sampling": dropped,
        "workdir": str(workdir),
    }


def dataset_entry(
    runs: dict[str, dict[str, Any]], peer: dict[str, Any], aligned: Path, spec: dict[str, Any]
) -> dict[str, Any]:
    """Both systems scored on the aligned test rows: what the table and the JSON show of a dataset.

    `runs`: run_fuseline's result by preset; `peer`: run_autogluon's; `spec`: export_split's.
    """
    import pandas as pd

    first = next(iter(runs.values()))["summary"]
    task, primary = first["task"], first["primary_metric"]
    table = pd.read_parquet(aligned, columns=[ID, TARGET])
    target = table.assign(**{ID: table[ID].astype(str)}).set_index(ID)[TARGET]
    entry: dict[str, Any] = {
        "task": task,
        "primary_metric": primary,
        "rows": spec["rows"],
        "autogluon": {
            "version": peer["version"],
            "fit_seconds": round(peer["fit_seconds"], 1),
            "process_seconds": round(peer["process_seconds"], 1),
            "best_model": peer["best_model"],
            "models": peer["models"],
        },
        "fuseline": {},
    }
    for preset, run in runs.items():
        y_true, predictions = prediction_arrays(task, target, run["predictions"], peer["predictions"])
        scored = side_by_side(task, primary, y_true, predictions["fused"], predictions[PEER])
        entry["autogluon"]["scores"] = scored[PEER]  # the same for every preset: same rows, same seed
        entry["fuseline"][preset] = {
            "fit_seconds": round(run["fit_seconds"], 1),
            "scores": scored["fused"],
            f"minus_{PEER}": scored[f"fused_minus_{PEER}"],
            "ensemble": run["summary"].get("ensemble"),
            "stage_seconds": run["summary"].get("stage_seconds"),
        }
    return entry


def table_rows(name: str, entry: dict[str, Any]) -> list[list[str]]:
    """The dataset's lines of the table: each fuseline preset, AutoGluon, each paired difference."""
    metrics = reported_metrics(entry["task"], entry["primary_metric"])
    test_rows = str(entry["rows"]["test"])

    def cells(scores: dict[str, Any]) -> list[str]:
        return [f"{scores[m]['value']} [{scores[m]['ci95'][0]}, {scores[m]['ci95'][1]}]" for m in metrics]

    peer = entry["autogluon"]
    lines = [
        [name, f"fuseline {preset}", test_rows, *cells(run["scores"]), f"{run['fit_seconds']}"]
        for preset, run in entry["fuseline"].items()
    ]
    lines.append(
        [name, f"autogluon {peer['preset']}", test_rows, *cells(peer["scores"]), f"{peer['fit_seconds']}"]
    )
    lines += [
        [name, f"fuseline {preset} - autogluon", test_rows, *cells(run[f"minus_{PEER}"]), ""]
        for preset, run in entry["fuseline"].items()
    ]
    return lines


def format_table(report: dict[str, Any]) -> str:
    """One table for every dataset: metric value [95 % interval] per system, and fit seconds."""
    if not report["datasets"]:
        return "no dataset ran"
    lines: list[list[str]] = []
    header: list[str] = []
    for name, entry in report["datasets"].items():
        metrics = reported_metrics(entry["task"], entry["primary_metric"])
        header = ["dataset", "system", "test rows", *metrics, "fit s"]
        lines += table_rows(name, entry)
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    rendered = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *lines]
    ]
    budgets = ", ".join(f"{n} {e['time_budget_seconds']} s" for n, e in report["datasets"].items())
    return "\n".join([*rendered, f"time budget (AutoGluon time_limit): {budgets}"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line, last")
    parser.add_argument("--datasets", default="flipkart,pokemon,petfinder", help="comma-separated names")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path, default=None, help="keep each run under DIR/<dataset>")
    parser.add_argument("--presets", default="fast", help="fuseline's train.preset values: fast,best")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds, for both (see above)")
    parser.add_argument("--rows", type=int, default=None, help="a sample of N source rows: a quick check")
    parser.add_argument("--autogluon-preset", default=AUTOGLUON_PRESET)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a fuseline params.yaml setting, as bench/real.py --set takes it")  # fmt: skip
    parser.add_argument("--peers-python", type=Path, default=None, help="an interpreter with autogluon")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:  # in AutoGluon's venv: nothing of the project is importable there
        autogluon_worker(args.worker)
        return
    known = list(real().DATASETS)
    wanted = [d for d in args.datasets.split(",") if d]
    if sorted(set(wanted) - set(known)):
        parser.error(f"unknown datasets {sorted(set(wanted) - set(known))}; known: {', '.join(known)}")
    presets = [p for p in args.presets.split(",") if p]
    if not presets or set(presets) - set(real().PRESETS):
        parser.error(f"unknown presets {presets}; known: {', '.join(real().PRESETS)}")
    if args.rows is not None and args.rows < 50:
        parser.error("--rows must be at least 50")
    report = run(args, wanted)
    if not args.json:
        print(format_table(report))
        if report["skipped"]:
            print(f"skipped: {report['skipped']}")
    else:
        print(json.dumps(report))


def run(args: argparse.Namespace, wanted: list[str]) -> dict[str, Any]:
    """Every wanted dataset whose source file is there; the others under `skipped`."""
    report: dict[str, Any] = {
        "benchmark": "bench/peers.py",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "autogluon_requirement": REQUIREMENT,
        "split_seed": real().SPLIT_SEED,
        "settings": list(args.set),
        "timing_note": "wall seconds on a possibly shared CPU; both systems ran in this invocation",
        "datasets": {},
        "skipped": {},
    }
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fuseline-bench-peers-"))
    for name in wanted:
        source = args.data_root / real().DATASETS[name]["sources"][0]["path"]
        if not source.is_file():
            report["skipped"][name] = f"{source} not found"
            continue
        report["datasets"][name] = bench_dataset(name, args, root)
    return report


if __name__ == "__main__":
    main()
