"""Flow `fuseline-monitor`: do rows the served model has never seen drift from the rows it learned from?

The model is the served one: the registry's promoted version (models/ until the first
promotion), or `--model`. The reference is its own train rows (its lineage: ids and content
digests, as data/aligned holds them); the batch is `--input`, or else the rows of the
current sources the model has never seen (added or changed since it was trained). See
tasks/monitor/rows.py. Compared:

- columns added, removed or retyped since the model was trained: a finding each, by name;
- numeric and categorical columns: KS / chi-squared tests and the PSI, unseen categories;
- every column: its share of missing values;
- text, image and audio columns: a domain classifier on their embeddings, computed through
  the encoders and the row-level cache that batch prediction uses;
- with a model: its predicted classes and scores (against its predictions on val and test),
  and its performance: the primary metric on the batch rows whose labels have arrived, with
  a bootstrap interval, and before they arrive an estimate from its calibrated probabilities
  (CBPE, tasks/monitor/performance.py). Each run appends a record to
  `monitor.output`/performance.json and redraws performance.png (tasks/monitor/history.py);
  the `monitor-performance` table and `monitor-performance-plot` markdown artifacts keep
  fixed keys, so the UI lists every run's numbers as versions of one artifact.

Each check's rule is in tasks/config.py (DriftThresholds); p-values are adjusted over the
run's checks together (Holm), so `alpha` bounds the false alarms per run. The run writes
`monitor.output`/drift.{json,md,png}, publishes the `fuseline-drift` markdown and
`fuseline-drift-table` table artifacts, and ends in a Completed state named "Drift detected"
when any check drifted, so the runs list shows it; with `monitor.retrain_on_drift` it then
starts the `fuseline-retrain/scheduled-retrain` deployment. Drift is a finding, not a
failure: the run fails only when it cannot compare.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from flows._commands import parse_roots, run_command
from flows._retry import IO_RETRIES
from flows._runtime import cron_deployment
from tasks import escape
from tasks.config import DataConfig, MonitorConfig, Params, load_params
from tasks.device import pick_device
from tasks.errors import BundleError
from tasks.features.cache import FeatureCache
from tasks.modalities.probe_memo import memo_folder
from tasks.monitor.checks import Check, holm
from tasks.monitor.embeddings import embed_rows, embedding_checks, encoder_specs
from tasks.monitor.history import (
    FIGURE_NAME,
    HISTORY_NAME,
    append_record,
    history_markdown,
    history_record,
    history_table,
    summary_line,
    write_history_figure,
)
from tasks.monitor.performance import Performance, measure_performance, shortfall_check, unmeasured
from tasks.monitor.predictions import prediction_checks
from tasks.monitor.report import DriftReport, write_report
from tasks.monitor.rows import (
    Batch,
    Reference,
    aligned_rows,
    batch_from_sources,
    model_reference,
    new_batch,
    newest_rows,
    sample_rows,
    served_model_dir,
    with_file_labels,
)
from tasks.monitor.schema import Schema, compare_schemas, roles_of, table_roles
from tasks.monitor.tabular import tabular_checks
from tasks.pathcheck import check_input_path
from tasks.paths import Layout
from tasks.schema import TARGET
from tasks.serve.predict import Predictor, Roots, absolute_file_cells, cached_predictor, file_roots
from tasks.serve.promotion import resolve_model_dir
from tasks.train.bundle import META, bundle_metric
from tasks.train.lineage import read_lineage

DEPLOYMENT = "scheduled-monitor"
RETRAIN_DEPLOYMENT = "fuseline-retrain/scheduled-retrain"
MARKDOWN_KEY, TABLE_KEY = "fuseline-drift", "fuseline-drift-table"
# fixed keys: every run is a new version of the same artifact, so the UI shows the history
PERFORMANCE_TABLE_KEY, PERFORMANCE_PLOT_KEY = "monitor-performance", "monitor-performance-plot"
DRIFT_STATE = "Drift detected"
SERVED = "served"  # `model`'s default: the registry's promoted version, else models/
NEWEST = "newest rows"  # the aspect suffix of checks on the rows no model has trained on yet


@task(name="read-reference", cache_policy=NO_CACHE)
def read_reference(layout: Layout, bundle: Bundle | None, params: Params) -> Reference:
    """The served model's train rows and held-out (val, test) rows, each a seeded sample."""
    predictor = _predictor(bundle, params)
    lineage = read_lineage(Path(bundle.path), predictor.meta.lineage) if bundle and predictor else None
    rows, where = aligned_rows(layout), str(layout.aligned)
    if predictor is not None and not set(predictor.data.columns.all()) <= set(rows.columns):
        # The last run aligned without columns the served model reads (a params.yaml edit since
        # reverted, or a candidate that was kept out): its train rows are read afresh from the
        # sources, as the batch is, rather than reported as a schema change of the data.
        rows, where = batch_from_sources(params.data, memo_folder(params.cache.dir)), "the current sources"
    found = model_reference(rows, lineage, bundle.path if bundle else None, where)
    settings = params.monitor
    train = sample_rows(found.train, settings.max_rows, settings.seed)
    held_out = sample_rows(found.held_out, settings.max_rows, settings.seed)
    return replace(
        found,
        train=train,
        held_out=held_out,
        description=_sampled(found.description, len(found.train), len(train)),
    )


@task(name="read-batch", cache_policy=NO_CACHE, **IO_RETRIES)
def read_batch(
    data: DataConfig,
    input_path: str | None,
    roots: Roots,
    settings: MonitorConfig,
    reference: Reference,
    probe_memo: Path | None = None,
) -> Batch:
    """The new rows (retried: they may sit on flaky storage), sampled like the reference."""
    batch = new_batch(data, input_path, roots, reference.lineage, probe_memo)
    if input_path:  # labels that arrived for these rows: the model's realized performance
        batch = with_file_labels(batch, input_path, data)
    rows = sample_rows(batch.rows, settings.max_rows, settings.seed)
    return replace(batch, rows=rows, description=_sampled(batch.description, len(batch.rows), len(rows)))


@task(name="read-newest", cache_policy=NO_CACHE)
def read_newest(layout: Layout, bundle: Bundle | None, batch: Batch) -> Batch | None:
    """The batch's rows no model has trained on yet (newest_rows), when models/ is not the served model.

    models/ is the last retrain's candidate, kept or promoted; a lineage it cannot vouch for
    (missing, edited) leaves the batch as the only comparison rather than failing the monitor.
    """
    if bundle is None or Path(bundle.path).resolve() == layout.models.resolve():
        return None
    try:
        record = json.loads((layout.models / META).read_text()).get("lineage")
        latest = read_lineage(layout.models, record)
    except (OSError, ValueError, AttributeError, BundleError):
        return None
    return newest_rows(batch, latest)


@task(name="tabular-drift", cache_policy=NO_CACHE)
def tabular_drift(
    reference: pd.DataFrame, batch: pd.DataFrame, params: Params, data: DataConfig
) -> list[Check]:
    """The columns both sides hold alike (`data`: params.yaml's, less the schema findings)."""
    return tabular_checks(reference, batch, data, params.monitor.threshold)


@task(name="embedding-drift", cache_policy=NO_CACHE)
def embedding_drift(
    reference: pd.DataFrame,
    batch: pd.DataFrame,
    params: Params,
    bundle: Bundle | None,
    roots: tuple[Roots, Roots],
    data: DataConfig,
) -> list[Check]:
    """Vectors of both sides through the same encoders (the model's, else params.yaml's) and cache.

    Both sides use the same encoder and the device's precision, so the comparison is like for
    like whatever the bundle recorded; on the machine that trained, the train rows are cache hits.
    `data` holds the columns both sides hold alike.
    """
    predictor = _predictor(bundle, params)
    own = predictor.specs if predictor is not None else {}
    specs = encoder_specs(params.encoders, data, exclude=own) | own
    cache, device = FeatureCache(params.cache.dir), pick_device("auto")
    ref_blocks = embed_rows(reference, data, specs, roots[0], cache, device)
    batch_blocks = embed_rows(batch, data, specs, roots[1], cache, device)
    return embedding_checks(ref_blocks, batch_blocks, params.monitor.threshold, params.monitor.seed)


@task(name="predict-sides", cache_policy=NO_CACHE)
def predict_sides(
    held_out: pd.DataFrame, batch: pd.DataFrame, params: Params, bundle: Bundle, roots: tuple[Roots, Roots]
) -> tuple[np.ndarray, np.ndarray]:
    """The served model (its ensemble) on held-out reference rows and on the batch."""
    predictor = _predictor(bundle, params)
    assert predictor is not None
    cache, device = FeatureCache(params.cache.dir), pick_device("auto")
    # members that open files themselves (the fine-tuned image model) need the rows' own roots
    held_out = absolute_file_cells(held_out, predictor.data, roots[0])
    batch = absolute_file_cells(batch, predictor.data, roots[1])
    reference = predictor.predictions(held_out, roots[0], cache, device)[1]
    new = predictor.predictions(batch, roots[1], cache, device)[1]
    return reference, new


@task(name="prediction-drift", cache_policy=NO_CACHE)
def prediction_drift(
    predictions: tuple[np.ndarray, np.ndarray], params: Params, bundle: Bundle
) -> list[Check]:
    """The model's predicted classes and scores: held-out reference rows against the batch."""
    meta = _predictor(bundle, params).meta
    classes = list(meta.classes or [])
    return prediction_checks(meta.task, classes, *predictions, params.monitor.threshold)


@task(name="measure-performance", cache_policy=NO_CACHE)
def performance_of(
    held_out: pd.DataFrame,
    batch: pd.DataFrame,
    predictions: tuple[np.ndarray, np.ndarray],
    params: Params,
    bundle: Bundle,
) -> Performance:
    """Realized on the batch rows with labels, CBPE's estimate on all (tasks/monitor/performance.py)."""
    meta = _predictor(bundle, params).meta
    sides = ((held_out.get(TARGET), predictions[0]), (batch.get(TARGET), predictions[1]))
    classes, metric = tuple(meta.classes or ()), bundle_metric(meta)  # what it was selected on
    return measure_performance(meta.task, classes, *sides, seed=params.monitor.seed, metric=metric)


@task(name="publish-performance", cache_policy=NO_CACHE)
def publish_performance(record: dict[str, Any], out_dir: str) -> dict[str, str]:
    """Append the run to performance.json, redraw performance.png, publish both artifacts."""
    records = append_record(record, Path(out_dir))
    figure = str(write_history_figure(records, Path(out_dir)))
    create_table_artifact(
        key=PERFORMANCE_TABLE_KEY, table=history_table(records),
        description=f"The served model's {record['metric']} per monitor run (estimated, realized, reference)",
    )  # fmt: skip
    create_markdown_artifact(
        key=PERFORMANCE_PLOT_KEY, markdown=history_markdown(records, figure),
        description="The served model's latest performance and its figure over time",
    )  # fmt: skip
    return {HISTORY_NAME: str(Path(out_dir) / HISTORY_NAME), FIGURE_NAME: figure}


@task(name="publish-drift", cache_policy=NO_CACHE)
def publish_drift(report: DriftReport, out_dir: str) -> dict[str, str]:
    """Files first (atomically), then the artifacts (from a task: Prefect 3.8 drops a flow body's)."""
    files = write_report(report, Path(out_dir))
    create_markdown_artifact(
        key=MARKDOWN_KEY, markdown=report.markdown() + f"\nFigure: {escape.code(files['drift.png'])}\n",
        description="Drift of the new rows against the training reference",
    )  # fmt: skip
    create_table_artifact(
        key=TABLE_KEY, table=report.table(),
        description=f"Drift checks ({'drift' if report.drifted else 'no drift'}): one row per check",
    )  # fmt: skip
    return files


@task(name="trigger-retrain", **IO_RETRIES)
def trigger_retrain() -> str:
    """Start the retraining deployment and return at once (timeout=0): its run is its own.

    Keyed by this monitor run, so a retry after a lost reply cannot start a second retrain.
    """
    from prefect.deployments import run_deployment
    from prefect.runtime import flow_run

    run = run_deployment(
        RETRAIN_DEPLOYMENT, timeout=0, tags=["fuseline", "drift"], idempotency_key=f"drift-{flow_run.id}"
    )
    return str(run.id)


@flow(name="fuseline-monitor")
def monitor(
    params_path: str = "params.yaml",
    input_path: str | None = None,
    model: str | None = SERVED,
    roots: dict[str, str] | None = None,
) -> State:
    """Compare `input_path` (or, without it, the current rows the model has not seen) with its train rows.

    `model` is "served" (the registry's promoted version, models/ until the first promotion),
    a bundle directory or a registry (its promoted version); None compares the inputs only,
    against the train rows of data/aligned. `roots` names the directory of a file modality's
    paths in `input_path` (default: params.yaml's `data.<modality>_root`). Returns a Completed
    state, named "Drift detected" when any check drifted; its result is the run's summary.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    params = load_params(params_path)
    settings, layout = params.monitor, Layout()
    bundle = _bundle(model, params, layout)
    predictor = _predictor(bundle, params)  # fails here, before any work, on a bad bundle or encoder
    if bundle is not None:
        logger.info("model: %s (%s)", bundle.path, bundle.chosen)
    sides = (file_roots(params.data), file_roots(params.data, roots if input_path else None))
    reference = read_reference(layout, bundle, params)
    batch = read_batch(params.data, input_path, sides[1], settings, reference, memo_folder(params.cache.dir))
    schema = _schema(predictor, params, reference, batch)
    logger.info("comparing %s with %s", batch.description, reference.description)
    checks: list[Check] = []
    notes = [*reference.notes, *batch.notes]
    performance = None
    if predictor is not None:  # replaced below where the model's predictions are compared
        why = "the model's predictions were not compared (see the drift notes)"
        performance = unmeasured(predictor.meta.task, len(batch.rows), why, bundle_metric(predictor.meta))
    if batch.rows.empty:
        notes.append("no rows to compare: the batch is empty")
    else:
        checks += tabular_drift(reference.train, batch.rows, params, schema.compared)
        checks += embedding_drift(reference.train, batch.rows, params, bundle, sides, schema.compared)
        newest = read_newest(layout, bundle, batch) if not input_path else None
        if newest is not None:  # a shift in the last drop alone, not diluted by older unseen rows
            recent = tabular_drift(reference.train, newest.rows, params, schema.compared)
            recent += embedding_drift(reference.train, newest.rows, params, bundle, sides, schema.compared)
            checks += [replace(check, aspect=f"{check.aspect}, {NEWEST}") for check in recent]
            notes.append(f"also compared on their own: {newest.description}")
        if predictor is None:
            notes.append("no model given: the model's predictions were not compared")
        elif reference.held_out.empty:
            notes.append("no val or test rows: the model's predictions were not compared")
        elif not schema.holds(roles_of(predictor.data.columns)):
            notes.append(
                "columns the model reads changed (schema findings): its predictions were not compared"
            )
        else:
            predictions = predict_sides(reference.held_out, batch.rows, params, bundle, sides)
            checks += prediction_drift(predictions, params, bundle)
            performance = performance_of(reference.held_out, batch.rows, predictions, params, bundle)
            shortfall = shortfall_check(performance, settings.threshold)  # labels arrived: a concept change?
            checks += [shortfall] if shortfall is not None else []
    report = DriftReport(
        # alpha: the chance of a false alarm per run; schema findings are no test and stay as they are
        checks=holm(checks, settings.threshold) + schema.findings,
        reference=reference.description,
        batch=batch.description,
        model=bundle.path if bundle is not None else None,
        thresholds=settings.threshold,
        notes=notes,
    )
    files: dict[str, str] = {}
    if performance is not None:
        record = history_record(performance, bundle.path, *_model_identity(Path(bundle.path)), report.drifted)
        report = replace(report, performance=record)
        files |= publish_performance(record, settings.output)
        logger.info("performance: %s", escape.log(summary_line(record)))
    files = publish_drift(report, settings.output) | files
    logger.info("%s", report.headline(escape.log))
    for line in report.column_lines():
        logger.warning("drift: %s", escape.log(line))
    retrain_run = trigger_retrain() if report.drifted and settings.retrain_on_drift else None
    if retrain_run:
        logger.info("started %s (flow run %s)", RETRAIN_DEPLOYMENT, retrain_run)
    summary: dict[str, Any] = report.to_json() | {
        "files": files,
        "retrain_flow_run": retrain_run,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if report.drifted:
        message = "; ".join(report.column_lines())
        return Completed(name=DRIFT_STATE, message=message[:2000], data=summary)
    return Completed(message=report.headline(), data=summary)


class Bundle(NamedTuple):
    """A resolved bundle directory and its version stamp: what tasks get instead of the loaded model."""

    path: str
    mtime_ns: int
    chosen: str = ""  # why this one, for the log: "the promoted v0002 of registry", "--model models"


def _bundle(model: str | None, params: Params, layout: Layout) -> Bundle | None:
    """The bundle directory (a registry's promoted version), or None to compare the inputs only.

    SERVED picks what deployments serve: `schedule.registry`'s promoted version, or models/
    before anything was promoted.
    """
    if model is None:
        return None
    if model == SERVED:
        where, chosen = served_model_dir(Path(params.schedule.registry), layout.models)
    else:
        where, chosen = Path(model), f"--model {model}"
    path = resolve_model_dir(where).resolve()
    files = [p for p in path.iterdir() if p.is_file()]
    return Bundle(str(path), max((p.stat().st_mtime_ns for p in files), default=0), chosen)


def _model_identity(path: Path) -> tuple[str, str]:
    """A readable version ("v0002" in a registry, else the directory's name) and a short digest.

    The digest is of bundle.json's own (weights and metadata, checked when it was loaded), so
    a retrained models/ reads as another model even under the same name.
    """
    version = path.parent.name if re.fullmatch(r"v\d+", path.parent.name) else path.name
    recorded = json.loads((path / META).read_text(encoding="utf-8")).get("digest") or {}
    parts = f"{recorded.get('weights', '')}:{recorded.get('meta', '')}"
    return version, hashlib.sha256(parts.encode()).hexdigest()[:12]


def _schema(predictor: Predictor | None, params: Params, reference: Reference, batch: Batch) -> Schema:
    """Columns changed since the model was trained (without one: since data/aligned was aligned)."""
    current = roles_of(params.data.columns)
    before = roles_of(predictor.data.columns) if predictor else table_roles(reference.train, current)
    since = "since the model was trained" if predictor else "since data/aligned was aligned"
    return compare_schemas(before, params.data, {"reference": reference.train, "batch": batch.rows}, since)


def _sampled(description: str, total: int, kept: int) -> str:
    """`description`, and how many of its `total` rows the seeded sample kept (monitor.max_rows)."""
    return description if kept == total else f"{description}; a seeded sample of {kept}"


def _predictor(bundle: Bundle | None, params: Params) -> Predictor | None:
    """The loaded bundle, encoders checked against it; loaded once per process and bundle version."""
    if bundle is None:
        return None
    return cached_predictor(bundle.path, bundle.mtime_ns, str(Path(params.cache.dir).resolve()))


def deployment(params_path: str = "params.yaml", name: str = DEPLOYMENT) -> Any:
    """The monitor flow as a deployment on `monitor.cron` in `monitor.timezone`.

    It watches the served model (SERVED): the rows of the current sources that model has not
    seen, against its own train rows.
    """
    settings = load_params(params_path).monitor
    description = (
        f"Drift of the source rows the served model has not seen against its train rows on '{settings.cron}' "
        f"({settings.timezone})"
    )
    description += "; retrains on drift" if settings.retrain_on_drift else ""
    return cron_deployment(monitor, name, settings.cron, settings.timezone, params_path, description)


def monitor_command(args: argparse.Namespace) -> None:
    """`fuseline monitor`: the verdict, one line per drifted column; drift is not an error."""
    if args.input is not None:
        check_input_path(args.input)  # one line before the flow starts (a FIFO, a device, missing)
    summary = monitor(
        params_path=args.params,
        input_path=args.input,
        model=None if args.inputs_only else args.model,
        roots=parse_roots(args.root) or None,
    )
    print(summary["headline"])
    for line in summary["column_lines"]:
        print(f"  drift: {line}")
    if summary.get("performance"):
        history = summary["files"]["performance.png"]
        print(f"performance: {summary_line(summary['performance'])} (over time: {history})")
    print(f"report: {summary['files']['drift.md']} (exit 0: drift is reported, not an error)")


if __name__ == "__main__":
    run_command("monitor", monitor_command)
