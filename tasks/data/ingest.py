"""Ingest: read the sources, check the declared columns, write a typed raw snapshot.

The snapshot keeps only declared columns with normalised types, so every later stage reads
one well-typed format whatever the user's files were (CSV, Parquet, JSON lines).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.atomic import atomic_dir, write_json
from tasks.config import DataConfig
from tasks.data.columns import refuse_missing_columns
from tasks.data.sources import REPLACED_BYTES, read_source
from tasks.errors import DataError, preview
from tasks.modalities import embedded

MANIFEST = "manifest.json"
BAD_VALUES = "fuseline.bad_values"  # frame.attrs key: {column: numeric cells made missing}
TARGET_TYPE = "fuseline.target_type"  # frame.attrs key: how the source typed the target (target_type)
# Spellings of "no value" that a numeric column reads as missing, not as a bad value. CSV
# cells are read verbatim (only an empty one is missing), so text and categories keep them.
NA_TOKENS = frozenset(
    {"na", "n/a", "nan", "-nan", "null", "none", "<na>", "#n/a", "#n/a n/a", "#na", "-1.#ind", "1.#ind",
     "-1.#qnan", "1.#qnan"}
)  # fmt: skip

_CONTAINERS = (list, tuple, dict, set, np.ndarray)  # cell values no role reads as one value

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSnapshot:
    """What ingest wrote for one source table."""

    source: str
    file: str
    rows: int
    columns: tuple[str, ...]
    bad_values: dict[str, int] = field(default_factory=dict)  # numeric cells made missing
    replaced_bytes: dict[str, int] = field(default_factory=dict)  # cells with non-UTF-8 bytes
    target_type: str | None = None  # int | float | bool | str; None: the target is not in this source


def ingest_sources(data: DataConfig, out_dir: Path) -> list[SourceSnapshot]:
    """Validate every source against the declared roles and snapshot them into `out_dir`."""
    as_text = [data.id, *data.columns.read_as_text(), *data.split.source_columns()]
    frames = [(source.path, read_source(source, text_columns=as_text)) for source in data.sources]
    refuse_missing_columns(data, [(path, frame.columns) for path, frame in frames])
    snapshots: list[SourceSnapshot] = []
    with atomic_dir(out_dir) as tmp:
        for index, (path, frame) in enumerate(frames):
            typed = typed_columns(data, path, frame)
            name = f"source-{index}.parquet"
            pa_table = pa.Table.from_pandas(typed, preserve_index=False)
            pq.write_table(pa_table, tmp / name)
            snapshots.append(
                SourceSnapshot(
                    path, name, len(typed), tuple(typed.columns),
                    typed.attrs.get(BAD_VALUES, {}), typed.attrs.get(REPLACED_BYTES, {}),
                    target_type(frame[data.target], data.task) if data.target in frame else None,
                )
            )  # fmt: skip
        write_json(
            {"sources": [s.__dict__ for s in snapshots]},
            tmp / MANIFEST,
        )
    return snapshots


def read_snapshots(raw_dir: Path) -> list[tuple[str, pd.DataFrame]]:
    """The typed tables written by ingest, with the source path each came from.

    Each frame's attrs carry ingest's counts (BAD_VALUES, REPLACED_BYTES) and the target's
    type in the source (TARGET_TYPE), so align can put them in its summary without another
    file to read.
    """
    manifest = json.loads((raw_dir / MANIFEST).read_text())
    tables = []
    for entry in manifest["sources"]:
        frame = pd.read_parquet(raw_dir / entry["file"])
        frame.attrs = {
            BAD_VALUES: entry.get("bad_values", {}),
            REPLACED_BYTES: entry.get("replaced_bytes", {}),
            TARGET_TYPE: entry.get("target_type"),
        }
        tables.append((entry["source"], frame))
    return tables


def target_type(series: pd.Series, task: str) -> str:
    """How the user's file typed the target: int, float, bool or str.

    Ingest stores class labels as strings (`4`, `True`), one form whatever the format; the
    bundle records this type so that prediction gives labels back as the training data had
    them (4, not "4"). Regression targets are numbers, multilabel ones label lists.
    """
    if task == "regression":
        return "float"
    if task == "multilabel":
        return "str"
    values = series.dropna()
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    kinds = set(values.map(type))  # an object column: JSON lines with blanks, or mixed values
    if kinds == {bool}:
        return "bool"
    if kinds and kinds <= {int, np.int64}:
        return "int"
    return "str"


def typed_columns(data: DataConfig, path: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Keep this source's declared columns, each converted to the type its role needs.

    The result's attrs count what was repaired: BAD_VALUES (numeric cells that were not
    finite numbers, made missing under `data.on_bad_value: missing`) and REPLACED_BYTES.
    """
    roles = {c: role for role in data.columns.roles() for c in getattr(data.columns, role)}
    for column in data.split.source_columns():
        roles.setdefault(column, "categorical")  # read as text; a feature column keeps its role
    replaced = dict(frame.attrs.get(REPLACED_BYTES, {}))
    frame = frame.copy(deep=False)
    frame.attrs = {}  # pandas deep-copies attrs into every column taken out: 0.1 ms a column
    bad_values: dict[str, int] = {}
    numbers = _plain_numbers(
        frame, [c for c in frame.columns if c != data.target and roles.get(c) == "numeric"]
    )
    plain = set(numbers.columns)
    # Gathered, then made into one frame: inserting column by column copies the column index
    # each time, quadratic in columns (10,000 numeric columns took minutes and 26k warnings).
    columns = {data.id: _as_string(_usable(frame[data.id], "id", path, replaced))}
    for column in frame.columns:
        if column == data.target:
            columns[column] = _target_column(frame[column], data.task, path)
        elif column in plain:
            continue
        elif column in roles:
            series = _usable(frame[column], roles[column], path, replaced)
            if roles[column] == "numeric":
                columns[column], bad = _numeric(series, path, data.on_bad_value)
                if bad:
                    bad_values[column] = bad
            else:
                columns[column] = _convert(series, roles[column])
    order = [data.id, *(c for c in frame.columns if c != data.id and (c in columns or c in plain))]
    out = pd.concat([pd.DataFrame(columns), numbers], axis=1)[order]
    out.attrs = {BAD_VALUES: bad_values, REPLACED_BYTES: {c: n for c, n in replaced.items() if c in out}}
    return out


def _plain_numbers(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The numeric-role columns the reader already typed as finite numbers, as float64, in one pass.

    What `_numeric` gives each of them, as one 2-D block, without its per-column pandas calls
    (1.7 ms a column: 17 s for 10,000). A column holding text or an infinity is left to `_numeric`.
    """
    dtypes = frame.dtypes
    plain = [
        c for c in columns
        if pd.api.types.is_numeric_dtype(dtypes[c]) and not pd.api.types.is_complex_dtype(dtypes[c])
    ]  # fmt: skip
    block = frame[plain].to_numpy(dtype=np.float64, na_value=np.nan)  # (rows, columns)
    keep = ~np.isinf(block).any(axis=0)
    return pd.DataFrame(
        block[:, keep], columns=[c for c, k in zip(plain, keep, strict=True) if k], index=frame.index
    )


def _usable(series: pd.Series, role: str, path: str, replaced: dict[str, int]) -> pd.Series:
    """Refuse values no role can use (lists, records, dates as numbers); decode raw bytes.

    Parquet and JSON can hold nested values; turning `[1, 2]` into the string "[1, 2]" would
    be silent damage, so it is an error naming the column, its type and the first rows.
    """
    column = str(series.name)
    if role == "numeric" and (
        pd.api.types.is_datetime64_any_dtype(series) or pd.api.types.is_timedelta64_dtype(series)
    ):
        raise DataError(
            f"declared numeric but holds {series.dtype} values; convert them to numbers first",
            file=path,
            column=column,
        )
    if series.dtype != object:
        return series
    _refuse_nested(series, role, path)
    is_bytes = series.map(lambda v: isinstance(v, (bytes, bytearray)))
    if is_bytes.any():
        decoded = series[is_bytes].map(lambda v: bytes(v).decode("utf-8", errors="replace"))
        hits = int(decoded.str.contains("\ufffd", regex=False).sum())
        if hits:
            replaced[column] = replaced.get(column, 0) + hits
            log.warning("%s: %d cells of %r held non-UTF-8 bytes; replaced by U+FFFD", path, hits, column)
        series = series.copy()
        series[is_bytes] = decoded
    return series


def _refuse_nested(series: pd.Series, role: str, path: str, label_lists: bool = False) -> None:
    """A DataError naming the column and rows whose cells hold lists or records.

    With `label_lists` (a multilabel target) a flat list of labels is a value; a list inside
    it is not. The example is shown with `preview`, which stays short and safe however deep
    the value is nested (repr() of a list nested 1,000 levels raised RecursionError here).
    """
    if series.dtype != object:
        return
    nested = series.map(lambda value: _nested(value, label_lists))
    if nested.any():
        example = series[nested].iloc[0]
        raise DataError(
            f"holds nested values ({type(example).__name__}, e.g. {preview(example, 40)}) that a "
            f"{role} column cannot use; declare a plain column or flatten it first",
            file=path,
            column=str(series.name),
            rows=[int(i) + 1 for i in series.index[nested]],
        )


def _nested(value: object, label_lists: bool) -> bool:
    """Whether a cell holds a container; with `label_lists`, a container inside its list of labels."""
    if not isinstance(value, _CONTAINERS):
        return False
    if not label_lists or isinstance(value, dict | set):
        return True
    if isinstance(value, np.ndarray) and value.ndim != 1:
        return True
    if isinstance(value, np.ndarray) and value.dtype != object:
        return False  # numbers or strings: no item can be a container
    return any(isinstance(item, _CONTAINERS) for item in value)


def _as_string(series: pd.Series) -> pd.Series:
    """Strings with real missing values; floats that are whole numbers lose their '.0'."""
    if pd.api.types.is_float_dtype(series) and series.dropna().mod(1).eq(0).all():
        series = series.astype("Int64")
    return series.astype("string")


def _convert(series: pd.Series, role: str) -> pd.Series:
    if role in _verbatim_roles():
        return series.astype("string")  # free text: spaces and spellings are content
    return label_strings(series)


def _verbatim_roles() -> set[str]:
    return {plugin.name for plugin in embedded() if plugin.verbatim_cells}


def label_strings(series: pd.Series) -> pd.Series:
    """Categories and class labels in one form whatever the file format.

    Surrounding spaces are dropped (`yes ` is `yes`), a blank cell is missing, and a float
    column of whole numbers reads `12345`, as the same value does in a CSV.
    """
    text = _as_string(series).str.strip()
    return text.mask(text.eq(""))


def _numeric(series: pd.Series, path: str, on_bad: str) -> tuple[pd.Series, int]:
    """float64 values and how many cells were bad (not a finite number) and made missing.

    Blank cells and the usual spellings of "no value" are simply missing, not bad. Under
    `on_bad == "error"` a bad cell is a DataError naming the file, column and rows.
    """
    if pd.api.types.is_bool_dtype(series):
        return series.astype("float64"), 0
    if pd.api.types.is_numeric_dtype(series):
        converted = series.astype("float64")
        bad = pd.Series(np.isinf(converted.to_numpy()), index=series.index)
    else:
        text = series.astype("string").str.strip()
        blank = (text.isna() | text.eq("") | text.str.lower().isin(NA_TOKENS)).fillna(True).astype(bool)
        converted = pd.to_numeric(text.where(~blank).astype(object), errors="coerce").astype("float64")
        bad = ~blank & (converted.isna() | np.isinf(converted))
    if not bad.any():
        return converted, 0
    count = int(bad.sum())
    rows = [int(i) + 1 for i in series.index[bad]]
    sample = ", ".join(preview(v) for v in series[bad].head(3))
    message = f"declared numeric but {count} values are not finite numbers (e.g. {sample})"
    if on_bad == "error":
        raise DataError(message, file=path, column=str(series.name), rows=rows)
    log.warning("%s: column %r: %s; made missing (data.on_bad_value: missing)", path, series.name, message)
    return converted.mask(bad), count


def _target_column(series: pd.Series, task: str, path: str) -> pd.Series:
    """Targets are never repaired: a wrong label would train the model on something false."""
    _refuse_nested(series, f"{task} target", path, label_lists=task == "multilabel")
    if task == "regression":
        return _numeric(series, path, "error")[0]
    if task == "multilabel":
        return _as_string(series)  # a list per cell: tasks/data/labels.py parses and strips it
    return label_strings(series)
