"""Flow `fuseline-monitor`: does a new batch (or today's source tables) drift from the training rows?

Compared with the train rows of data/aligned (what the model learned from):

- numeric and categorical columns: KS / chi-squared tests and the PSI, unseen categories;
- every column: its share of missing values;
- text, image and audio columns: a domain classifier on their embeddings, computed through
  the encoders and the row-level cache that batch prediction uses;
- with a model: its predicted classes and scores (against its predictions on val and test).

Each check's rule is in tasks/config.py (DriftThresholds); p-values are adjusted over the
run's checks together (Holm), so `alpha` bounds the false alarms per run. The run writes
`monitor.output`/drift.{json,md,png}, publishes the `fuseline-drift` markdown and
`fuseline-drift-table` table artifacts, and ends in a Completed state named "Drift detected"
when any check drifted, so the runs list shows it; with `monitor.retrain_on_drift` it then
starts the `fuseline-retrain/scheduled-retrain` deployment. Drift is a finding, not a
failure: the run fails only when it cannot compare.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from flows._retry import IO_RETRIES
from flows._runtime import cron_deployment
from tasks.config import DataConfig, MonitorConfig, Params, load_params
from tasks.device import pick_device
from tasks.features.cache import FeatureCache
from tasks.monitor.checks import Check, holm
from tasks.monitor.embeddings import embed_rows, embedding_checks, encoder_specs
from tasks.monitor.predictions import prediction_checks
from tasks.monitor.report import DriftReport, write_report
from tasks.monitor.rows import aligned_rows, batch_from_file, batch_from_sources, sample_rows, split_rows
from tasks.monitor.tabular import tabular_checks
from tasks.paths import Layout
from tasks.serve.predict import Predictor, Roots, absolute_file_cells, cached_predictor, file_roots
from tasks.serve.promotion import resolve_model_dir

DEPLOYMENT = "scheduled-monitor"
RETRAIN_DEPLOYMENT = "fuseline-retrain/scheduled-retrain"
MARKDOWN_KEY, TABLE_KEY = "fuseline-drift", "fuseline-drift-table"
DRIFT_STATE = "Drift detected"


@task(name="read-reference", cache_policy=NO_CACHE)
def read_reference(layout: Layout, settings: MonitorConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded sample of the train rows, and one of the held-out (val, test) rows."""
    aligned = aligned_rows(layout)
    train = sample_rows(split_rows(aligned, "train"), settings.max_rows, settings.seed)
    held_out = sample_rows(split_rows(aligned, "val", "test"), settings.max_rows, settings.seed)
    return train, held_out


@task(name="read-batch", cache_policy=NO_CACHE, **IO_RETRIES)
def read_batch(
    data: DataConfig, input_path: str | None, roots: Roots, settings: MonitorConfig
) -> pd.DataFrame:
    """The new rows (retried: they may sit on flaky storage), sampled like the reference."""
    rows = batch_from_file(input_path, data, roots) if input_path else batch_from_sources(data)
    return sample_rows(rows, settings.max_rows, settings.seed)


@task(name="tabular-drift", cache_policy=NO_CACHE)
def tabular_drift(reference: pd.DataFrame, batch: pd.DataFrame, params: Params) -> list[Check]:
    return tabular_checks(reference, batch, params.data, params.monitor.threshold)


@task(name="embedding-drift", cache_policy=NO_CACHE)
def embedding_drift(
    reference: pd.DataFrame,
    batch: pd.DataFrame,
    params: Params,
    bundle: Bundle | None,
    roots: tuple[Roots, Roots],
) -> list[Check]:
    """Vectors of both sides through the same encoders (the model's, else params.yaml's) and cache.

    Both sides use the same encoder and the device's precision, so the comparison is like for
    like whatever the bundle recorded; on the machine that trained, the train rows are cache hits.
    """
    predictor = _predictor(bundle, params)
    own = predictor.specs if predictor is not None else {}
    specs = encoder_specs(params.encoders, params.data, exclude=own) | own
    cache, device = FeatureCache(params.cache.dir), pick_device("auto")
    ref_blocks = embed_rows(reference, params.data, specs, roots[0], cache, device)
    batch_blocks = embed_rows(batch, params.data, specs, roots[1], cache, device)
    return embedding_checks(ref_blocks, batch_blocks, params.monitor.threshold, params.monitor.seed)


@task(name="prediction-drift", cache_policy=NO_CACHE)
def prediction_drift(
    held_out: pd.DataFrame, batch: pd.DataFrame, params: Params, bundle: Bundle, roots: tuple[Roots, Roots]
) -> list[Check]:
    """The served model (its ensemble) on held-out reference rows and on the batch."""
    predictor = _predictor(bundle, params)
    assert predictor is not None
    cache, device = FeatureCache(params.cache.dir), pick_device("auto")
    # members that open files themselves (the fine-tuned image model) need the rows' own roots
    held_out = absolute_file_cells(held_out, predictor.data, roots[0])
    batch = absolute_file_cells(batch, predictor.data, roots[1])
    reference = predictor.predictions(held_out, roots[0], cache, device)[1]
    new = predictor.predictions(batch, roots[1], cache, device)[1]
    meta = predictor.meta
    return prediction_checks(meta.task, list(meta.classes or []), reference, new, params.monitor.threshold)


@task(name="publish-drift", cache_policy=NO_CACHE)
def publish_drift(report: DriftReport, out_dir: str) -> dict[str, str]:
    """Files first (atomically), then the artifacts (from a task: Prefect 3.8 drops a flow body's)."""
    files = write_report(report, Path(out_dir))
    create_markdown_artifact(
        key=MARKDOWN_KEY, markdown=report.markdown() + f"\nFigure: `{files['drift.png']}`\n",
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
    model: str | None = "models",
    roots: dict[str, str] | None = None,
) -> State:
    """Compare `input_path` (or, without it, the current sources) with the training rows.

    `model` is a bundle directory or a registry (its promoted version); None compares the
    inputs only. `roots` names the directory of a file modality's paths in `input_path`
    (default: params.yaml's `data.<modality>_root`). Returns a Completed state, named
    "Drift detected" when any check drifted; its result is the run's summary.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    params = load_params(params_path)
    settings, layout = params.monitor, Layout()
    bundle = _bundle(model)
    _predictor(bundle, params)  # fails here, before any work, on a bad bundle or encoder
    sides = (file_roots(params.data), file_roots(params.data, roots if input_path else None))
    reference, held_out = read_reference(layout, settings)
    batch = read_batch(params.data, input_path, sides[1], settings)
    logger.info("comparing %d batch rows with %d train rows", len(batch), len(reference))
    checks = tabular_drift(reference, batch, params)
    checks += embedding_drift(reference, batch, params, bundle, sides)
    notes = []
    if bundle is None:
        notes.append("no model given: the model's predictions were not compared")
    elif held_out.empty:
        notes.append("no val or test rows: the model's predictions were not compared")
    else:
        checks += prediction_drift(held_out, batch, params, bundle, sides)
    report = DriftReport(
        checks=holm(checks, settings.threshold),  # alpha: the chance of a false alarm per run
        reference=f"{len(reference)} train rows of {layout.aligned}",
        batch=f"{len(batch)} rows of {input_path or 'the current sources'}",
        model=bundle.path if bundle is not None else None,
        thresholds=settings.threshold,
        notes=notes,
    )
    files = publish_drift(report, settings.output)
    logger.info(report.headline())
    for line in report.column_lines():
        logger.warning("drift: %s", line)
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


def _bundle(model: str | None) -> Bundle | None:
    """The bundle directory (a registry's promoted version), or None to compare the inputs only."""
    if model is None:
        return None
    path = resolve_model_dir(Path(model)).resolve()
    files = [p for p in path.iterdir() if p.is_file()]
    return Bundle(str(path), max((p.stat().st_mtime_ns for p in files), default=0))


def _predictor(bundle: Bundle | None, params: Params) -> Predictor | None:
    """The loaded bundle, encoders checked against it; loaded once per process and bundle version."""
    if bundle is None:
        return None
    return cached_predictor(bundle.path, bundle.mtime_ns, str(Path(params.cache.dir).resolve()))


def deployment(params_path: str = "params.yaml", name: str = DEPLOYMENT) -> Any:
    """The monitor flow as a deployment on `monitor.cron` in `monitor.timezone` (the current sources)."""
    settings = load_params(params_path).monitor
    description = f"Drift of the sources against the train rows on '{settings.cron}' ({settings.timezone})"
    description += "; retrains on drift" if settings.retrain_on_drift else ""
    return cron_deployment(monitor, name, settings.cron, settings.timezone, params_path, description)


if __name__ == "__main__":
    import sys

    from flows.cli import main

    main(["monitor", *sys.argv[1:]])
