"""Reading the user's source tables (CSV, Parquet, JSON lines), with errors that name the file."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import SourceConfig
from tasks.errors import DataError
from tasks.pathcheck import open_regular

REPLACED_BYTES = "fuseline.replaced_bytes"  # frame.attrs key: {column: cells holding U+FFFD}
# Only an empty CSV cell is missing on reading. pandas' default list would also turn the
# strings NA (a region code), None and null into missing values, silently, in every column;
# numeric columns still read those spellings as missing (see ingest.NA_TOKENS).
_CSV_MISSING = [""]

log = logging.getLogger(__name__)

_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


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

    Bytes that are not UTF-8 (a Latin-1 export, a stray byte) become U+FFFD rather than
    failing the whole file; the cells that hold one are counted per column in
    `frame.attrs[REPLACED_BYTES]` and logged. Errors that rereading cannot fix (missing,
    empty, unreadable, a directory, permission denied) name the file and are never retried.

    The file is opened once and must be a regular file (a FIFO or a device is refused before
    any read): the second decoding pass and the header check rewind that one handle.
    """
    fmt = source_format(source)
    path = source.path
    with open_regular(path, DataError, "source") as handle:
        frame, replaced = _read_once(fmt, handle, path, text_columns)
        if fmt == "csv":
            handle.seek(0)
            _refuse_duplicate_header(handle, path)
    frame.columns = [str(c) for c in frame.columns]
    frame.attrs[REPLACED_BYTES] = replaced
    return frame


def read_columns(source: SourceConfig, wanted: Collection[str] = ()) -> list[str]:
    """The source's column names, read without its rows: what `fuseline check` compares params with.

    Parquet gives its schema (the footer), CSV its header line. JSON lines have no header, so
    records are read until every `wanted` name has been seen, or to the end of the file when
    one is truly missing (a key may first appear in any record). Names come out as
    `read_source` would name the columns; a file it would refuse as empty is refused here too.
    """
    fmt = source_format(source)
    path = source.path
    with open_regular(path, DataError, "source") as handle:
        try:
            if fmt == "parquet":
                names = _parquet_columns(handle)
            elif fmt == "csv":
                names = _csv_header(handle)
            else:
                names = _jsonl_keys(handle, set(wanted), path)
        except (ValueError, csv.Error, pa.ArrowException) as err:
            raise DataError(f"cannot read as {fmt}: {err}", file=path) from None
    if not names:
        raise DataError("source file is empty", file=path)
    return names


def _parquet_columns(handle: BinaryIO) -> list[str]:
    """The schema's names, less the index columns pandas stored (read_parquet makes those the index)."""
    schema = pq.ParquetFile(handle).schema_arrow
    stored = (schema.pandas_metadata or {}).get("index_columns", [])
    index = {name for name in stored if isinstance(name, str)}  # a RangeIndex is stored as a dict
    return [str(name) for name in schema.names if name not in index]


def _csv_header(handle: BinaryIO) -> list[str]:
    """The first non-blank line's cells, as pandas names them (a UTF-8 byte-order mark dropped)."""
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="replace", newline="")
    try:
        return next((row for row in csv.reader(text) if any(cell.strip() for cell in row)), [])
    finally:
        text.detach()  # the caller closes the handle


def _jsonl_keys(handle: BinaryIO, wanted: set[str], path: str) -> list[str]:
    """Keys of the records in file order, stopping as soon as every wanted key has been seen."""
    seen: dict[str, None] = {}  # insertion-ordered set
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8", errors="replace"))
        except (ValueError, RecursionError) as err:
            raise DataError(f"line {number}: cannot read as jsonl: {err}", file=path) from None
        if isinstance(record, dict):
            seen |= dict.fromkeys(str(key) for key in record)
            if wanted and wanted <= seen.keys():
                break
    return list(seen)


def _read_once(
    fmt: str, handle: BinaryIO, path: str, text_columns: Collection[str]
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The table and its replaced-byte counts; bytes that are not UTF-8 cost a second pass."""
    try:
        try:
            frame = _read(fmt, handle, text_columns, "strict")
            replaced: dict[str, int] = {}
        except UnicodeDecodeError:
            handle.seek(0)
            frame = _read(fmt, handle, text_columns, "replace")
            replaced = _cells_with_replacement(frame)
            log.warning(
                "%s: bytes that are not UTF-8 were replaced by U+FFFD in %s",
                path,
                ", ".join(f"{n} cells of {c!r}" for c, n in replaced.items()) or "column names",
            )
    except pd.errors.EmptyDataError:
        raise DataError("source file is empty", file=path) from None
    except (ValueError, pa.ArrowException, UnicodeDecodeError, pd.errors.ParserError) as err:
        line = _first_bad_json_line(handle) if fmt == "jsonl" else None
        where = f"line {line}: " if line is not None else ""
        raise DataError(f"{where}cannot read as {fmt}: {err}", file=path) from None
    if frame.empty:
        raise DataError("source has a header but no rows", file=path)
    return frame, replaced


def _read(fmt: str, handle: BinaryIO, text_columns: Collection[str], encoding_errors: str) -> pd.DataFrame:
    if fmt == "csv":
        # keep_default_na with empty strings as NaN, but never let pandas guess dates.
        return pd.read_csv(
            handle,
            low_memory=False,
            dtype={c: str for c in text_columns},
            encoding_errors=encoding_errors,
            keep_default_na=False,
            na_values=_CSV_MISSING,
        )
    if fmt == "parquet":
        return pd.read_parquet(handle)
    return pd.read_json(handle, lines=True, dtype=False, encoding_errors=encoding_errors)


def _first_bad_json_line(handle: BinaryIO) -> int | None:
    """The first line (from 1) that is not a JSON value, or None when each line parses here.

    pandas' reader reports a position in the whole file ("depth limit at position 1113"); a
    person needs the line. Each line is parsed on its own, so a line nested 100,000 levels deep
    stops the parser with RecursionError at Python's limit, which is caught here.
    """
    handle.seek(0)
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            json.loads(line.decode("utf-8", errors="replace"))
        except (ValueError, RecursionError):
            return number
    return None


def _refuse_duplicate_header(handle: BinaryIO, path: str) -> None:
    """pandas renames a repeated header `price` to `price.1` and the pipeline would train on
    one of the two without a word; the Parquet reader refuses the same table, so CSV does too.
    """
    text = io.TextIOWrapper(handle, encoding="utf-8", errors="replace", newline="")
    try:
        header = next(csv.reader(text), [])
    finally:
        text.detach()  # the caller closes the handle
    repeated = sorted(name for name, count in Counter(h.strip() for h in header).items() if count > 1)
    if repeated:
        raise DataError(
            f"the header names {', '.join(repr(n) for n in repeated)} more than once; rename the copies "
            "so that each column has one name",
            file=path,
            column=repeated[0],
        )


def _cells_with_replacement(frame: pd.DataFrame) -> dict[str, int]:
    counts: dict[str, int] = {}
    for column in frame.columns:
        values = frame[column]
        if values.dtype == object or pd.api.types.is_string_dtype(values):
            hits = int(values.map(lambda v: isinstance(v, str) and "\ufffd" in v).sum())
            if hits:
                counts[str(column)] = hits
    return counts
