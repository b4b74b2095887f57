"""Ingest: read the sources, check the declared columns, write a typed raw snapshot.

The snapshot keeps only declared columns with normalised types, so every later stage reads
one well-typed format whatever the user's files were (CSV, Parquet, JSON lines).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.atomic import atomic_dir, write_json
from tasks.config import DataConfig
from tasks.errors import DataError, closest_names
from tasks.sources import read_source

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SourceSnapshot:
    """What ingest wrote for one source table."""

    source: str
    file: str
    rows: int
    columns: tuple[str, ...]


def ingest_sources(data: DataConfig, out_dir: Path) -> list[SourceSnapshot]:
    """Validate every source against the declared roles and snapshot them into `out_dir`."""
    as_text = [data.id, *data.columns.categorical, *data.columns.text, *data.columns.image]
    if data.split.column is not None:
        as_text.append(data.split.column)
    frames = [(source.path, read_source(source, text_columns=as_text)) for source in data.sources]
    _check_declared_columns(data, frames)
    snapshots: list[SourceSnapshot] = []
    with atomic_dir(out_dir) as tmp:
        for index, (path, frame) in enumerate(frames):
            typed = _typed_columns(data, path, frame)
            name = f"source-{index}.parquet"
            pa_table = pa.Table.from_pandas(typed, preserve_index=False)
            pq.write_table(pa_table, tmp / name)
            snapshots.append(SourceSnapshot(path, name, len(typed), tuple(typed.columns)))
        write_json(
            {"sources": [s.__dict__ for s in snapshots]},
            tmp / MANIFEST,
        )
    return snapshots


def read_snapshots(raw_dir: Path) -> list[tuple[str, pd.DataFrame]]:
    """The typed tables written by ingest, with the source path each came from."""
    manifest = json.loads((raw_dir / MANIFEST).read_text())
    return [(entry["source"], pd.read_parquet(raw_dir / entry["file"])) for entry in manifest["sources"]]


def _declared(data: DataConfig) -> list[str]:
    columns = [data.target, *data.columns.all()]
    if data.split.column is not None:
        columns.append(data.split.column)
    return columns


def _check_declared_columns(data: DataConfig, frames: list[tuple[str, pd.DataFrame]]) -> None:
    for path, frame in frames:
        if data.id not in frame.columns:
            raise DataError(
                f"the id column {data.id!r} is missing{closest_names(data.id, frame.columns)}",
                file=path,
                column=data.id,
            )
    available = {c for _, frame in frames for c in frame.columns}
    for column in _declared(data):
        if column not in available:
            files = ", ".join(path for path, _ in frames)
            raise DataError(
                f"declared column {column!r} is in none of the sources"
                f"{closest_names(column, available)}",
                file=files,
                column=column,
            )


def _typed_columns(data: DataConfig, path: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Keep this source's declared columns, each converted to the type its role needs."""
    roles = {c: "categorical" for c in data.columns.categorical}
    roles |= {c: "numeric" for c in data.columns.numeric}
    roles |= {c: "text" for c in data.columns.text}
    roles |= {c: "image" for c in data.columns.image}
    if data.split.column is not None:
        roles[data.split.column] = "categorical"
    out = pd.DataFrame({data.id: _as_string(frame[data.id])})
    for column in frame.columns:
        if column == data.target:
            out[column] = _target_column(frame[column], data.task, path)
        elif column in roles:
            out[column] = _convert(frame[column], roles[column], path)
    return out


def _as_string(series: pd.Series) -> pd.Series:
    """Strings with real missing values; floats that are whole numbers lose their '.0'."""
    if pd.api.types.is_float_dtype(series) and series.dropna().mod(1).eq(0).all():
        series = series.astype("Int64")
    return series.astype("string")


def _convert(series: pd.Series, role: str, path: str) -> pd.Series:
    if role == "numeric":
        return _numeric(series, path)
    if role == "text":
        return series.astype("string")
    return _as_string(series)


def _numeric(series: pd.Series, path: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(series):
        return series.astype("float64")
    if pd.api.types.is_numeric_dtype(series):
        return series.astype("float64")
    converted = pd.to_numeric(series, errors="coerce")
    bad = series.notna() & converted.isna() & series.astype("string").str.strip().ne("")
    if bad.any():
        rows = [int(i) + 1 for i in series.index[bad]]
        sample = ", ".join(repr(v) for v in series[bad].head(3))
        raise DataError(
            f"declared numeric but {int(bad.sum())} values are not numbers (e.g. {sample})",
            file=path,
            column=str(series.name),
            rows=rows,
        )
    return converted.astype("float64")


def _target_column(series: pd.Series, task: str, path: str) -> pd.Series:
    if task == "regression":
        return _numeric(series, path)
    return _as_string(series)
