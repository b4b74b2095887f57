"""Lineage: which rows a model was trained, validated and tested on, as ids and content digests.

The monitor needs two things train used to forget: the served model's own train rows (its
drift reference), and which of today's rows it has never seen (the batch). `data/aligned` is
rewritten by every run, so after a retrain that was not promoted it holds another model's
rows, and a split that is redrawn moves rows between train and test. So the bundle keeps,
beside its weights, `lineage.parquet`: one row per aligned row with

    row_id   string  the aligned table's id
    split    string  train | val | test, as this model saw it
    digest   uint64  a 64-bit hash of the row as align wrote it (its id, target, every
                     declared column, presence mask and file digest; the split aside)

Eight bytes of digest a row plus the id: a million rows take about 14 MB, where the rows'
own values would take gigabytes. A row is "seen" when a table holds the same id with the
same digest, so a row edited since training counts as new. The columns the digest covers and
their kinds are recorded with it; a table that lacks one of them, or holds it as another kind
(a column removed or retyped since), cannot be compared by content, and rows then match by
id alone (`Lineage.unfit` names the columns, so a caller can say so).

The file's SHA-256, the column list, the split settings and the splits the model learned
from (`fitted`: train, and val too after a refit, tasks/train/refit.py) live in the fused
bundle's bundle.json (`lineage`), which the bundle digest covers: an edited lineage is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.atomic import write_parquet
from tasks.config import SplitConfig
from tasks.errors import BundleError
from tasks.schema import ID, SPLIT, SPLITS

LINEAGE = "lineage.parquet"
DIGEST = "digest"
_NA = "\x00<NA>"  # what a missing text cell hashes as: no real cell holds a NUL byte and this text
_CHUNK_ROWS = 200_000
_SEED, _MULTIPLIER = np.uint64(0x9E3779B97F4A7C15), np.uint64(0x100000001B3)  # golden ratio; FNV prime


@dataclass(frozen=True)
class Lineage:
    """The rows a model has seen: ids, splits and content digests, and what the digests cover."""

    rows: pd.DataFrame  # row_id, split, digest
    columns: dict[str, str]  # content column -> kind (number | bool | text)
    fitted: tuple[str, ...] = ("train",)  # the splits whose rows the model learned from

    def unfit(self, table: pd.DataFrame) -> list[str]:
        """Content columns `table` lacks or holds as another kind: its rows match by id alone."""
        return [
            name
            for name, kind in self.columns.items()
            if name not in table.columns or _kind(table[name]) != kind
        ]

    def splits_of(self, table: pd.DataFrame) -> np.ndarray:
        """The split each row of `table` had for this model; "" for a row it has never seen.

        Seen means same id and same content (digest); by id alone when `unfit(table)` names a column.
        """
        if self.unfit(table):
            keys, mine = table[ID].astype("string").to_numpy(dtype=object), self.rows[ID].astype("string")
        else:
            keys, mine = row_digests(table, self.columns), self.rows[DIGEST].to_numpy(dtype=np.uint64)
        lookup = pd.Series(self.rows[SPLIT].to_numpy(dtype=object), index=pd.Index(mine))
        lookup = lookup[~lookup.index.duplicated()]
        return lookup.reindex(keys).fillna("").to_numpy(dtype=object)

    def seen(self, table: pd.DataFrame, *splits: str) -> np.ndarray:
        """Which rows of `table` this lineage holds (in `splits`; in any split when none)."""
        found = self.splits_of(table)
        return np.isin(found, splits) if splits else found != ""

    def counts(self) -> dict[str, int]:
        """Rows per split, e.g. {"train": 700, "val": 150, "test": 150}."""
        counts = self.rows[SPLIT].value_counts()
        return {split: int(counts.get(split, 0)) for split in SPLITS}


def content_columns(aligned: pd.DataFrame) -> dict[str, str]:
    """Every column of an aligned table but the split, with its kind: what a row's digest covers."""
    return {name: _kind(aligned[name]) for name in sorted(aligned.columns) if name != SPLIT}


def row_digests(table: pd.DataFrame, columns: dict[str, str]) -> np.ndarray:
    """A 64-bit digest per row over `columns` (by name: bundle.json keeps them sorted), the same
    for the same values.

    Values are hashed in a canonical form (numbers as float64, masks as bool, anything else as
    its text), so a column read as `string` one day and `object` the next digests the same.
    Column by column and a chunk of rows at a time, so a million rows need no wide copy.
    """
    names = sorted(columns)
    digests = np.empty(len(table), dtype=np.uint64)
    for start in range(0, len(table), _CHUNK_ROWS):
        part = table.iloc[start : start + _CHUNK_ROWS]
        digest = np.full(len(part), _SEED, dtype=np.uint64)
        for name in names:
            values = pd.util.hash_pandas_object(_canonical(part[name], columns[name]), index=False)
            digest = (digest * _MULTIPLIER) ^ values.to_numpy(dtype=np.uint64)  # wraps modulo 2**64
        digests[start : start + len(part)] = digest
    return digests


def lineage_of(aligned: pd.DataFrame) -> Lineage:
    """The lineage of a model trained on `aligned` as it stands (its own split column)."""
    columns = content_columns(aligned)
    rows = pd.DataFrame(
        {
            ID: aligned[ID].astype("string").to_numpy(dtype=object),
            SPLIT: aligned[SPLIT].astype("string").to_numpy(dtype=object),
            DIGEST: row_digests(aligned, columns),
        }
    )
    return Lineage(rows, columns)


def write_lineage(
    directory: Path, aligned: pd.DataFrame, split: SplitConfig, fitted: tuple[str, ...] = ("train",)
) -> dict[str, Any]:
    """lineage.parquet in `directory` (atomically); the record bundle.json keeps of it, with the
    splits the model learned from (`fitted`)."""
    lineage = lineage_of(aligned)
    path = Path(directory) / LINEAGE
    write_parquet(pa.Table.from_pandas(lineage.rows, preserve_index=False), path)
    return {
        "file": LINEAGE,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "rows": lineage.counts(),
        "columns": lineage.columns,
        "split": split.model_dump(mode="json"),
        "fitted": list(fitted),
    }


def read_lineage(bundle_dir: Path, record: dict[str, Any] | None) -> Lineage | None:
    """The lineage a bundle recorded (None for bundles trained before lineage was kept).

    Refuses a file whose bytes are not the ones bundle.json names: the monitor's reference
    and batch would otherwise be chosen by an edited file.
    """
    if record is None:
        return None
    path = Path(bundle_dir) / LINEAGE
    fields = record if isinstance(record, dict) else {}
    if not isinstance(fields.get("sha256"), str) or not isinstance(fields.get("columns"), dict):
        raise BundleError(f"{path}: the bundle's lineage record names no digest or columns; retrain it")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise BundleError(f"{path}: cannot read the model's lineage ({err.strerror or err})") from None
    if hashlib.sha256(raw).hexdigest() != record.get("sha256"):
        raise BundleError(
            f"{path}: changed after the bundle was written (digest mismatch); retrain or restore it"
        )
    rows = pq.read_table(pa.BufferReader(raw)).to_pandas()
    fitted = fields.get("fitted", ["train"])  # bundles written before refit learned from train alone
    if not isinstance(fitted, list) or not set(fitted) <= set(SPLITS) or "train" not in fitted:
        raise BundleError(f"{path}: the bundle's lineage record names no valid fitted splits; retrain it")
    return Lineage(rows, dict(record["columns"]), tuple(fitted))


def _kind(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_numeric_dtype(series):
        return "number"
    return "text"


def _canonical(series: pd.Series, kind: str) -> pd.Series:
    """The values as one dtype per kind (text of any string dtype hashes as pandas' `string`)."""
    if kind == "bool":
        return pd.Series(series.astype("boolean").fillna(False).to_numpy(dtype=bool))
    if kind == "number":
        return pd.Series(series.to_numpy(dtype=np.float64, na_value=np.nan))
    return series.astype("string").fillna(_NA)
