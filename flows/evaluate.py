"""Stage `evaluate`: how good the fused model is, what each input contributes, and against what.

Writes reports/evaluation.json (the final model, single-modality, scikit-learn and majority/mean
baselines, every trained member, modality ablation, bootstrap intervals), the few headline
numbers of it as reports/metrics.json (what `dvc exp show` compares), reports/leaderboard.csv,
reports/plots/*.csv (DVC plots), reports/figures/*.png, reports/report.md and the test
predictions, and publishes the report as Prefect artifacts.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from torch import nn

from flows._entry import run_from_command_line
from tasks import escape
from tasks.atomic import atomic_dir, write_bytes, write_json, write_parquet, write_text
from tasks.config import Params, load_params
from tasks.device import single_threaded
from tasks.evaluate import figures
from tasks.evaluate.evaluation import (
    ablation_predictions,
    contributions_table,
    fused_embedding,
    metrics_report,
    plot_tables,
    predictions_table,
    primary_score,
    prior_name,
    prior_predictions,
    project_2d,
    untrained_missing,
)
from tasks.evaluate.importance import block_weights, feature_groups, permutation_importance, weights_by_group
from tasks.evaluate.report import ReportInputs, data_summary, render_report, worsening
from tasks.evaluate.summary import headline, leaderboard_table, model_label
from tasks.features.mapped import mapped_root
from tasks.paths import Layout
from tasks.scores.metrics import compute_metrics, higher_is_better
from tasks.scores.model_names import FUSED, FUSED_HEAD, SKLEARN
from tasks.train.assemble import load_feature_set, rows_in_order
from tasks.train.bundle import BundleMeta, baseline_dirs, load_bundle, predict_with
from tasks.train.dataset import FeatureSet, with_blocks
from tasks.train.finetuned_member import member_loaders
from tasks.train.members import MEMBER_SECONDS, load_final_model, load_member, read_ensemble
from tasks.train.refit import val_before_refit
from tasks.train.sklearn_baseline import TASKS as SKLEARN_TASKS
from tasks.train.sklearn_baseline import SklearnBaseline, fit_sklearn_baseline

REPORT_KEY = "fuseline-report"  # stable artifact keys: the UI versions them across runs
METRICS_KEY = "fuseline-metrics"
IMPORTANCE_KEY = "fuseline-importance"
CONTRIBUTIONS_KEY = "fuseline-contributions"
IMPORTANCE_REPEATS = 5
SEED = 0  # bootstrap, permutation and projection seed: reruns give identical reports

Bundle = tuple[nn.Module, BundleMeta]


@task(name="fit-sklearn-baseline", cache_policy=NO_CACHE)
def sklearn_baseline(aligned: pd.DataFrame, params: Params, classes: tuple[str, ...]) -> SklearnBaseline:
    task_name = params.data.task
    result = fit_sklearn_baseline(
        aligned, params.data.columns, task_name, classes, params.evaluate.baseline_max_rows,
        params.evaluate.chosen(task_name),
    )  # fmt: skip
    get_run_logger().info(
        "sklearn baseline: %s (by %s) on %d of %d train rows, %.1f s",
        result.selected, result.selected_by, result.train_rows, result.train_rows_available, result.seconds,
    )  # fmt: skip
    return result


@task(name="permutation-importance", cache_policy=NO_CACHE)
def importance(fused: Bundle, test: FeatureSet, params: Params) -> pd.DataFrame:
    model, meta = fused
    metric = params.evaluate.chosen(meta.task)
    sign = 1.0 if higher_is_better(metric) else -1.0

    def score(rows: FeatureSet) -> float:
        return sign * primary_score(meta.task, rows.target, predict_with(model, meta, rows), metric)

    columns = params.data.columns
    groups = feature_groups(meta.in_dims, meta.tabular, columns.categorical, columns.numeric, meta.wide)
    return permutation_importance(score, test, groups, repeats=IMPORTANCE_REPEATS, seed=SEED)


@task(name="publish-report-artifacts", cache_policy=NO_CACHE)
def publish(report: dict, markdown: str, importance_table: pd.DataFrame, contributions: pd.DataFrame) -> None:
    """Markdown page plus tables, under fixed keys so every run adds a version of the same artifact."""
    primary = report["primary_metric"]
    intervals = report["intervals"]
    rows = [{"model": "fused", **report["test"], **_interval_columns(intervals.get(FUSED))}]
    rows += [
        {"model": model_label(m), **values, **_interval_columns(intervals.get(m))}
        for m, values in report["baselines"].items()
    ]
    create_markdown_artifact(key=REPORT_KEY, markdown=markdown, description="fuseline evaluation report")
    create_table_artifact(
        key=METRICS_KEY,
        table=_json_safe(rows),
        description=f"Test metrics ({report['task']}; primary: {primary}; 95 % bootstrap CI)",
    )
    create_table_artifact(
        key=CONTRIBUTIONS_KEY,
        table=_json_safe(contributions.drop(columns="key").to_dict("records")),
        description=f"Test {primary}: fused, fused with a modality masked, single modalities, sklearn",
    )
    create_table_artifact(
        key=IMPORTANCE_KEY,
        table=_json_safe(importance_table.to_dict("records")),
        description=f"Permutation importance (how much test {primary} worsens when a column is shuffled)",
    )


def _interval_columns(interval: dict | None) -> dict[str, float]:
    return {"ci_low": interval["low"], "ci_high": interval["high"]} if interval else {}


def _json_safe(rows: list[dict]) -> list[dict]:
    """NaN is not JSON (the artifact API would refuse the whole table for one undefined AUC), and
    a column name in a cell must not open an HTML tag (`tasks.escape.table_value`)."""
    return [
        {
            k: (None if isinstance(v, float) and not math.isfinite(v) else escape.table_value(v))
            for k, v in row.items()
        }
        for row in rows
    ]


@flow(name="evaluate")
def evaluate(params_path: str = "params.yaml") -> dict:
    """Write metrics, plot data, figures, report and test predictions; publish the artifacts."""
    with single_threaded():
        return _evaluate(load_params(params_path))


def _evaluate(params: Params) -> dict:
    layout = Layout()
    logger = get_run_logger()
    timer = _Timer()
    fused = load_bundle(layout.models)
    model, meta = fused
    task_name = meta.task
    loaders = member_loaders(params.cache.dir)
    final = load_final_model(layout.models, fused, loaders)
    features = load_feature_set(
        layout, params.data.task, meta.classes or None, mapped=mapped_root(params.cache.dir)
    )
    baselines = {m: load_bundle(path) for m, path in baseline_dirs(layout.models).items()}
    aligned = pd.read_parquet(layout.aligned)
    rows = {s: int((features.split == s).sum()) for s in ("train", "val", "test")}
    test = features.of_split("test")

    # `fused` is the model prediction serves (the ensemble, when one was chosen), so every
    # fused_minus_<model> interval compares what users get with what they could have used.
    test_rows = rows_of(aligned, test)
    each = final.predict_each(test, test_rows)  # scored one by one for the leaderboard too
    predictions = {FUSED: final.combine(each)}
    if not final.is_fused_head:
        predictions[FUSED_HEAD] = predict_with(model, meta, test)
    predictions |= {m: predict_with(bm, bmeta, test) for m, (bm, bmeta) in sorted(baselines.items())}
    ablation = ablation_predictions(model, meta, test)
    timer.lap("predict")
    baseline = sklearn_baseline(aligned, params, features.classes) if task_name in SKLEARN_TASKS else None
    if baseline is not None:
        predictions[SKLEARN] = _in_order(baseline.test_predictions, baseline.test_ids, test.ids)
    timer.lap("sklearn")
    train_target = features.of_split("train").target
    prior = prior_name(task_name)
    predictions[prior] = prior_predictions(task_name, train_target, len(test.ids), len(features.classes))
    chosen = params.evaluate.chosen(task_name)  # evaluate.metric: metrics.json's primary_metric
    report = metrics_report(task_name, test.target, predictions, ablation, rows, seed=SEED, metric=chosen)
    val = features.of_split("val")
    if task_name == "binary":
        report["positive_class"] = meta.classes[1]
    if ablation:
        dropout = float(meta.params.get("train", {}).get("modality_dropout", 0.0))
        untrained = untrained_missing(features.of_split("train"), dropout)
        report["ablation_untrained"] = [m for m in untrained if m in ablation]
    report["val"] = val_scores(task_name, val, fused, baselines, chosen)
    val_final = final.predict(val, rows_of(aligned, val))
    report["val"][FUSED] = primary_score(task_name, val.target, val_final, chosen)
    if final.is_fused_head:
        del report["val"][FUSED_HEAD]
    guess = prior_predictions(task_name, train_target, len(val.ids), len(features.classes))
    report["val"][prior] = primary_score(task_name, val.target, guess, chosen)
    if baseline is not None:
        report["val"][SKLEARN] = baseline.candidates[baseline.selected]["val"].get(chosen, math.nan)
    ensemble = read_ensemble(layout.models)
    if ensemble is not None:
        # a refit member has learned the val rows: its val score is the one measured before
        report["val"] |= {k: v for k, v in val_before_refit(ensemble).items() if k in report["val"]}
        report["ensemble"] = {k: v for k, v in ensemble.items() if k not in ("files", "format_version")}
        seconds_file = layout.train_plots / MEMBER_SECONDS
        seconds = json.loads(seconds_file.read_text()) if seconds_file.is_file() else {}
        for entry in report["ensemble"].get("tried", []):
            entry["seconds"] = seconds.get(entry["name"])  # None: not recorded
    if baseline is not None:
        report["sklearn"] = {
            "selected": baseline.selected,
            "selected_by": baseline.selected_by,
            "candidates": baseline.candidates,
            "train_rows": baseline.train_rows,
            "train_rows_available": baseline.train_rows_available,
        }
    timer.lap("bootstrap")
    scored = _member_predictions(each, predictions, ensemble, baselines)
    scored |= _left_out_members(layout.models, ensemble, scored, loaders, test, test_rows)
    report["members"] = {
        name: compute_metrics(task_name, test.target, p, chosen) for name, p in scored.items()
    }
    timer.lap("members")
    importance_table = importance(fused, test, params)
    timer.lap("importance")
    weights = block_weights(model, with_blocks(test, meta.in_dims))
    weights_table = weights_by_group(weights, _group_labels(task_name, test)) if weights is not None else None
    coords, method = project_2d(fused_embedding(model, meta, test), seed=SEED)
    timer.lap("embedding")

    contributions = contributions_table(report, baseline.selected if baseline else None)
    tables = plot_tables(task_name, test, predictions[FUSED])
    tables["importance.csv"] = importance_table
    tables["contributions.csv"] = contributions
    if weights_table is not None:
        tables["block_weights.csv"] = weights_table
    with atomic_dir(layout.plots) as tmp:  # whole directory: no stale file from an older task
        for name, table in tables.items():
            write_text(table.to_csv(index=False), tmp / name)

    pngs = _draw(task_name, report["primary_metric"], tables, layout, test, coords, method, weights_table)
    with atomic_dir(_figures_dir(layout)) as tmp:
        for name, png in pngs.items():
            write_bytes(png, tmp / name)
    timer.lap("figures")

    board = leaderboard_table(report)  # no evaluate timing in a file: a rerun writes the same bytes
    inputs = ReportInputs(
        metrics=report,
        data=params.data,
        summary=data_summary(aligned, params.data),
        head=str(meta.fusion.get("head", "?")),
        sklearn=report.get("sklearn", {}),
        contributions=contributions,
        importance=importance_table,
        block_weights=weights_table,
        figures=list(pngs),
        embedding_method=method,
        leaderboard=board,
    )
    write_text(render_report(inputs), layout.reports / "report.md")
    write_json(report, layout.evaluation)
    write_json(headline(report), layout.metrics)
    write_text(board.to_csv(index=False), layout.leaderboard)
    write_parquet(
        pa.Table.from_pandas(predictions_table(task_name, test, predictions[FUSED]), preserve_index=False),
        layout.reports / "test_predictions.parquet",
    )
    publish(report, render_report(inputs, embed_figures=False), importance_table, contributions)
    timer.lap("write")
    logger.info("metrics: %s", json.dumps({"test": report["test"], "baselines": report["baselines"]}))
    logger.info("evaluate seconds per step: %s", timer.laps)
    return report


def val_scores(
    task_name: str,
    val: FeatureSet,
    fused: tuple[nn.Module, BundleMeta],
    baselines: dict,
    metric: str | None = None,
) -> dict[str, float]:
    """`metric` (None: the task's default) of the fused model and each single-modality model on val.

    Choosing "the best single modality" by its test score would pick on the rows the
    comparison is then reported on; the choice is made on val, and test is reported once.
    """
    models = {FUSED_HEAD: fused, **baselines}
    return {
        name: primary_score(task_name, val.target, predict_with(m, meta, val), metric)
        for name, (m, meta) in models.items()
    }


def _member_predictions(
    each: dict[str, np.ndarray], predictions: dict[str, np.ndarray], ensemble: dict | None, baselines: dict
) -> dict[str, np.ndarray]:
    """Test predictions of every member train fitted that evaluate has already made, by member name.

    The ensemble's members were predicted for the blend, the single modalities as baselines,
    and the fused head as `fused_head` (or as `fused` when it is the final model alone).
    """
    trained = _trained_names(ensemble, baselines)
    made = {**{n: p for n, p in predictions.items() if n in baselines}, **each}
    made.setdefault(FUSED, predictions.get(FUSED_HEAD, predictions[FUSED]))
    return {name: made[name] for name in trained if name in made}


def _left_out_members(
    models: Path,
    ensemble: dict | None,
    scored: dict[str, np.ndarray],
    loaders: dict,
    test: FeatureSet,
    test_rows: pd.DataFrame,
) -> dict[str, np.ndarray]:
    """Test predictions of the members the ensemble gave no weight (other heads, seeds, fine-tuned)."""
    if ensemble is None:
        return {}
    kinds = ensemble.get("kinds", {})
    return {
        name: load_member(models, name, kinds.get(name, "head"), loaders).predict(test, test_rows)
        for name in _trained_names(ensemble, {})
        if name not in scored
    }


def _trained_names(ensemble: dict | None, baselines: dict) -> list[str]:
    """The members train fitted, in its order; without ensemble.json, the fused head and baselines."""
    if ensemble is None:
        return [FUSED, *sorted(baselines)]
    return [t["name"] for t in ensemble.get("tried", []) if t.get("status") == "trained"]


def rows_of(aligned: pd.DataFrame, features: FeatureSet) -> pd.DataFrame:
    """The aligned rows of `features`, in its order: what members that read raw columns need."""
    return rows_in_order(aligned, features.ids)


def _figures_dir(layout: Layout) -> Path:
    return layout.reports / "figures"


def _draw(
    task_name: str,
    metric: str,
    tables: dict[str, pd.DataFrame],
    layout: Layout,
    test: FeatureSet,
    coords: np.ndarray,
    method: str,
    weights_table: pd.DataFrame | None,
) -> dict[str, bytes]:
    """PNG bytes by file name, in the order the report shows them."""
    drawn = {
        "contributions.png": figures.contributions(tables["contributions.csv"], metric),
        "importance.png": figures.importance(
            tables["importance.csv"], worsening(metric, higher_is_better(metric))
        ),
    }
    curve = layout.train_plots / "learning_curve.csv"
    if curve.is_file():
        drawn["learning_curve.png"] = figures.learning_curve(pd.read_csv(curve))
    for data_name, (png_name, draw) in figures.FROM_PLOT_DATA.items():
        if data_name in tables:
            drawn[png_name] = draw(tables[data_name])
    regression = task_name == "regression"
    drawn["embedding.png"] = figures.embedding(
        coords, _group_labels(task_name, test, bins=False), method, regression
    )
    if weights_table is not None:
        drawn["block_weights.png"] = figures.block_weights(weights_table)
    return {name: figures.to_png(figure) for name, figure in drawn.items()}


def _group_labels(task_name: str, test: FeatureSet, bins: bool = True) -> np.ndarray:
    """Class names; for regression the target itself, or its quartile when rows must be grouped."""
    if task_name == "multilabel":  # a row has several labels: no single group to colour it by
        return np.full(len(test.ids), "all rows")
    if task_name != "regression":
        return np.asarray(test.classes)[test.target.astype(int)]
    if not bins:
        return test.target
    quartile = pd.qcut(pd.Series(test.target), 4, duplicates="drop")
    return quartile.astype(str).to_numpy()


def _in_order(values: np.ndarray, ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Rows of `values` (keyed by `ids`) in the order of `wanted`."""
    position = pd.Index(ids).get_indexer(pd.Index(wanted))
    if (position < 0).any():
        raise ValueError("sklearn baseline predictions do not cover every test row")
    return values[position]


class _Timer:
    """Wall seconds per evaluate step, logged so a slow step is visible in the Prefect UI."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 2)
        self._last = now


if __name__ == "__main__":
    run_from_command_line(evaluate, "Evaluate the fused model against single-modality and sklearn baselines.")
