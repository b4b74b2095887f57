"""`new_rows` for a handful of rows: each column typed in plain Python, not by pandas operations.

An API request holds one row or a few. Ingest's typing (tasks/data/ingest.typed_columns),
the id check and the presence masks are pandas operations per column, each with a fixed cost
of about 0.1 ms whatever the rows: 24 ms for one demo row, as long as the text encoder's
forward. Here a small table whose cells are plain values (str, int, float, bool, missing) in
the usual column types is typed with the same rules, value by value, and built as one frame:
the same columns, dtypes, values and index as the pandas steps give.

Anything else returns None and the caller takes the pandas steps, which then also raise
any error: a nested value, bytes, a date, a numeric column holding text, an infinity, a
missing or repeated id. So an error is always ingest's own, by construction, and the
equivalence of the two paths is tested value by value (tests/tasks/serve/test_small_rows.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import DataConfig
from tasks.data.ingest import NA_TOKENS
from tasks.modalities import embedded
from tasks.schema import ID

SMALL_ROWS = 64  # up to this many rows, Python per value beats pandas per column
_WHOLE_LIMIT = 2**53  # whole floats up to here print as ints exactly (Int64 in ingest)
_BLANK = NA_TOKENS | {""}  # a numeric cell that is simply missing, once stripped and lowercased

Cells = list[Any]  # a column's values, None where missing


def typed_small(frame: pd.DataFrame, data: DataConfig) -> pd.DataFrame | None:
    """The id column (as `row_id`) and each feature column typed as `new_rows` types them, or None.

    `frame` has every feature column and the id (the caller checked), and no target or split
    column (dropped as irrelevant to prediction).
    """
    if len(frame) > SMALL_ROWS or not frame.columns.is_unique or not frame.index.is_unique:
        return None
    roles = {column: role for role in data.columns.roles() for column in getattr(data.columns, role)}
    if data.id in roles:
        return None  # an id that is also a feature: rare, typed by ingest's own steps
    for column in data.split.source_columns():  # typed (and checked) by ingest, then unused
        if column in frame.columns and column not in roles and _cells(frame[column]) is None:
            return None
    ids = _typed(frame[data.id], _label_text)
    if ids is None or not _usable_ids(ids):
        return None
    columns: dict[str, Any] = {ID: pd.array(ids, dtype="string")}
    verbatim = {plugin.name for plugin in embedded() if plugin.verbatim_cells}
    for column in data.columns.all():
        role = roles[column]
        if role == "numeric":
            typed = _numbers(frame[column])
        else:
            typed = _typed(frame[column], _verbatim_text if role in verbatim else _stripped_label)
            typed = None if typed is None else pd.array(typed, dtype="string")
        if typed is None:
            return None
        columns[column] = typed
    return pd.DataFrame(columns, index=frame.index)


def presence_small(values: pd.Series) -> np.ndarray | None:
    """tasks/data/align.presence of a small typed column (False where missing or blank text), or None."""
    if isinstance(values.dtype, pd.StringDtype):
        return np.array([isinstance(v, str) and v.strip() != "" for v in values.tolist()], dtype=bool)
    if values.dtype in (np.float64, np.int64, np.bool_):
        return values.notna().to_numpy()
    return None


# --- one column -------------------------------------------------------------------------------


def _cells(series: pd.Series) -> tuple[str, Cells] | None:
    """(the column's kind, its values with None for missing), or None for what pandas must type.

    Kinds: "float", "int", "bool" (numpy columns), "text" (pandas strings) and "object"
    holding only str, int, float, bool and missing values.
    """
    dtype = series.dtype
    values = series.tolist()
    if dtype == np.float64:
        return "float", [None if math.isnan(v) else v for v in values]
    if dtype == np.int64:
        return "int", values
    if dtype == np.bool_:
        return "bool", values
    if isinstance(dtype, pd.StringDtype):
        return "text", [v if isinstance(v, str) else None for v in values]
    if dtype != np.dtype(object):
        return None
    cells: Cells = []
    for value in values:
        if value is None or (type(value) is float and math.isnan(value)):
            cells.append(None)
        elif type(value) in (str, int, float, bool):
            cells.append(value)
        else:
            return None  # bytes, containers, numpy scalars, pd.NA, dates: ingest's steps
    return "object", cells


def _typed(series: pd.Series, convert: Callable[[str, Cells], Cells | None]) -> Cells | None:
    found = _cells(series)
    return None if found is None else convert(*found)


def _label_text(kind: str, cells: Cells) -> Cells | None:
    """ingest._as_string: strings; a float column of whole numbers prints them as ints ("12", not "12.0")."""
    if kind == "float" and all(v is None or v % 1 == 0 for v in cells):
        if any(v is not None and abs(v) >= _WHOLE_LIMIT for v in cells):
            return None
        return [None if v is None else str(int(v)) for v in cells]
    return _verbatim_text(kind, cells)


def _verbatim_text(kind: str, cells: Cells) -> Cells | None:
    """`astype("string")`: each value as str() writes it (floats shortest round-trip, True, 3)."""
    del kind  # every kind prints its values with str()
    return [None if v is None else v if type(v) is str else str(v) for v in cells]


def _stripped_label(kind: str, cells: Cells) -> Cells | None:
    """ingest.label_strings: as text, surrounding spaces dropped, a blank value missing."""
    text = _label_text(kind, cells)
    if text is None:
        return None
    stripped = [None if v is None else v.strip() for v in text]
    return [v or None for v in stripped]


def _numbers(series: pd.Series) -> np.ndarray | None:
    """float64 values, as ingest gives a numeric column; None for text to parse or an infinity."""
    found = _cells(series)
    if found is None:
        return None
    kind, cells = found
    if kind in ("float", "int", "bool"):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return None if np.isinf(values).any() else values
    if all(v is None or (type(v) is str and v.strip().lower() in _BLANK) for v in cells):
        return np.full(len(cells), np.nan)  # every cell blank or a "no value" spelling
    return None


def _usable_ids(ids: Cells) -> bool:
    """Every row with an id of its own (otherwise tasks/data/align.check_ids raises, naming the rows)."""
    present = [v for v in ids if v is not None and v.strip()]
    return len(present) == len(ids) and len(set(present)) == len(present)
