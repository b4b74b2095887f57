"""Stage `align`: join sources on the id, resolve images, add presence masks, split rows."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task

from flows._entry import run_from_command_line
from flows._retry import IO_RETRIES
from tasks.align_report import AlignReport
from tasks.atomic import atomic_dir, write_json
from tasks.config import DataConfig, load_params
from tasks.data.align import align
from tasks.data.ingest import read_snapshots
from tasks.modalities.probe_memo import memo_folder
from tasks.paths import Layout


@task(name="read-snapshots", **IO_RETRIES)
def load_snapshots(layout: Layout) -> list[tuple[str, pd.DataFrame]]:
    return read_snapshots(layout.raw)


@task(name="align-rows")
def align_rows(
    data: DataConfig, sources: list[tuple[str, pd.DataFrame]], probe_memo: Path
) -> tuple[pd.DataFrame, AlignReport]:
    return align(data, sources, probe_memo)


@task(name="write-aligned")
def write_aligned(aligned: pd.DataFrame, report: AlignReport, layout: Layout) -> Path:
    """Table and summary land together: the directory is swapped in as a whole."""
    with atomic_dir(layout.aligned_dir) as tmp:
        aligned.to_parquet(tmp / layout.aligned.name, index=False)
        write_json(asdict(report), tmp / layout.align_summary.name)
    return layout.aligned


@flow(name="align")
def align_flow(params_path: str = "params.yaml") -> AlignReport:
    """Write data/aligned/aligned.parquet (schema in tasks/data/align.py) and its summary."""
    params = load_params(params_path)
    layout = Layout()
    # beside the feature cache: a memo of files already hashed, which only makes align faster
    aligned, report = align_rows(params.data, load_snapshots(layout), memo_folder(params.cache.dir))
    write_aligned(aligned, report, layout)
    logger = get_run_logger()
    logger.info("aligned %d rows: %s", report.rows, report.rows_per_split)
    logger.info("present per column: %s", report.present)
    return report


if __name__ == "__main__":
    run_from_command_line(align_flow, "Join, resolve images, split.")
