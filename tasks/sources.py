"""Reading the user's source tables (CSV, Parquet, JSON lines), with errors that name the file."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pandas as pd
import pyarrow as pa

from tasks.config import SourceConfig
from tasks.errors import DataError

_SUFFIX_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def source_format(source: SourceConfig) -> str:
    """The declared format, else the one the file name implies."""
    if source.format is not None:
        return source.format
    suffix = Path(source.path.split("?", 1)[0]).suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise DataError(
            f"cannot tell the format from the suffix {suffix!r}; set data.sources[].format "
            "to csv, parquet or jsonl",
            file=source.path,
        )
    return _SUFFIX_FORMATS[suffix]


def read_source(source: SourceConfig, text_columns: Collection[str] = ()) -> pd.DataFrame:
    """Read one table as the user wrote it; an unreadable or empty file is a DataError.

    `text_columns` (ids, categories, text, image paths) are read from CSV as the strings in
    the file, so an id `007` stays `007` instead of becoming the number 7. JSON lines keep the
    types JSON gives them: pandas' guessing would turn the string "007" into 7 and a number in
    a column named `*_at` into a date.
    """
    fmt = source_format(source)
    path = source.path
    try:
        if fmt == "csv":
            # keep_default_na with empty strings as NaN, but never let pandas guess dates.
            frame = pd.read_csv(path, low_memory=False, dtype={c: str for c in text_columns})
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=True, dtype=False)
    except FileNotFoundError:
        raise DataError("source file not found", file=path) from None
    except pd.errors.EmptyDataError:
        raise DataError("source file is empty", file=path) from None
    except (ValueError, pa.ArrowException, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise DataError(f"cannot read as {fmt}: {err}", file=path) from None
    if frame.empty:
        raise DataError("source has a header but no rows", file=path)
    frame.columns = [str(c) for c in frame.columns]
    return frame
