"""Stage `ingest`: read the declared sources, validate columns and types, snapshot them."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from flows._entry import run_from_command_line
from flows._retry import IO_RETRIES
from tasks.config import DataConfig, load_params
from tasks.data.ingest import SourceSnapshot, ingest_sources
from tasks.paths import Layout


@task(name="snapshot-sources", **IO_RETRIES)
def snapshot_sources(data: DataConfig, layout: Layout) -> list[SourceSnapshot]:
    """Retried: sources may live on flaky network storage."""
    return ingest_sources(data, layout.raw)


@flow(name="ingest")
def ingest(params_path: str = "params.yaml") -> list[SourceSnapshot]:
    """Snapshot every source table into data/raw with normalised column types."""
    params = load_params(params_path)
    snapshots = snapshot_sources(params.data, Layout())
    logger = get_run_logger()
    for snap in snapshots:
        logger.info("%s: %d rows, columns %s", snap.source, snap.rows, ", ".join(snap.columns))
    return snapshots


if __name__ == "__main__":
    run_from_command_line(ingest, "Read and validate the source tables.")
