"""Align: join the sources on the id, resolve images safely, add presence masks, split.

Schema of `data/aligned/aligned.parquet` (one row per item, sorted by `row_id`):
    row_id            string   the id column, as text
    split             string   "train" | "val" | "test"
    target            string (classification) or float64 (regression)
    <feature column>  as declared: categorical/text/image as string, numeric as float64;
                      image values are paths relative to image_root, null when unusable
    present__<col>    bool     False where the row has no usable value for that column
    sha256__<image>   string   SHA-256 of the image file's bytes (null when absent): image
                               edits change the aligned table, so DVC and caches see them
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from tasks.config import DataConfig
from tasks.errors import DataError

ID, SPLIT, TARGET = "row_id", "split", "target"
PRESENT = "present__"
DIGEST = "sha256__"
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "dev": "val", "test": "test", "testing": "test"}
_MIN_ROWS_PER_CLASS = 3

log = logging.getLogger(__name__)


@dataclass
class AlignReport:
    """Counts a person wants to see after alignment (also written as summary.json)."""

    rows: int = 0
    rows_per_split: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    images_missing: dict[str, int] = field(default_factory=dict)
    images_refused: dict[str, int] = field(default_factory=dict)
    dropped_unmatched_ids: dict[str, int] = field(default_factory=dict)


def align(data: DataConfig, sources: list[tuple[str, pd.DataFrame]]) -> tuple[pd.DataFrame, AlignReport]:
    """The aligned table and its report, from the typed snapshots written by ingest."""
    for reserved in (ID, SPLIT, TARGET):
        if reserved in data.columns.all():
            raise DataError(f"feature column name {reserved!r} is reserved; rename it", column=reserved)
    report = AlignReport()
    table = _join(data, sources, report)
    _check_target(data, table)
    aligned = pd.DataFrame({ID: table[data.id].astype("string"), TARGET: table[data.target]})
    for column in data.columns.all():
        aligned[column] = table[column]
    for column in data.columns.image:
        aligned[column] = _resolve_images(aligned[column], Path(data.image_root), column, report)
    for column in data.columns.all():
        aligned[PRESENT + column] = _presence(aligned[column]).to_numpy()
        report.present[column] = int(aligned[PRESENT + column].sum())
    for column in data.columns.image:
        aligned[DIGEST + column] = _digests(aligned[column], Path(data.image_root))
    aligned = aligned.sort_values(ID, kind="stable").reset_index(drop=True)
    split_source = table.set_index(data.id)[data.split.column] if data.split.column else None
    aligned.insert(1, SPLIT, _split(data, aligned, split_source))
    report.rows = len(aligned)
    report.rows_per_split = {s: int((aligned[SPLIT] == s).sum()) for s in SPLITS}
    return aligned, report


def _join(data: DataConfig, sources: list[tuple[str, pd.DataFrame]], report: AlignReport) -> pd.DataFrame:
    for path, frame in sources:
        ids = frame[data.id]
        missing = ids.isna() | ids.str.strip().eq("")
        if missing.any():
            rows = [int(i) + 1 for i in frame.index[missing]]
            raise DataError(f"{int(missing.sum())} rows have no id", file=path, column=data.id, rows=rows)
        duplicated = ids.duplicated(keep=False)
        if duplicated.any():
            dup_ids = sorted(set(ids[duplicated]))
            raise DataError(
                f"{len(dup_ids)} ids occur more than once ({int(duplicated.sum())} rows)",
                file=path,
                column=data.id,
                rows=dup_ids,
            )
    base_path, table = sources[0]
    seen = {c: base_path for c in table.columns}
    for path, frame in sources[1:]:
        overlap = [c for c in frame.columns if c != data.id and c in seen]
        if overlap:
            raise DataError(
                f"column {overlap[0]!r} is also in {seen[overlap[0]]}; each column must come from one source",
                file=path,
                column=overlap[0],
            )
        unmatched = ~frame[data.id].isin(table[data.id])
        if unmatched.any():
            report.dropped_unmatched_ids[path] = int(unmatched.sum())
            log.warning("%s: %d ids are not in %s and are ignored", path, int(unmatched.sum()), base_path)
        table = table.merge(frame, on=data.id, how="left", validate="one_to_one")
        seen |= {c: path for c in frame.columns}
    return table


def _check_target(data: DataConfig, table: pd.DataFrame) -> None:
    target = table[data.target]
    missing = target.isna()
    if missing.any():
        raise DataError(
            f"{int(missing.sum())} rows have no target",
            column=data.target,
            rows=list(table.loc[missing, data.id]),
        )
    if data.task == "regression":
        return
    counts = target.value_counts()
    if data.task == "binary" and len(counts) != 2:
        raise DataError(f"a binary target needs exactly 2 classes, found {len(counts)}", column=data.target)
    rare = counts[counts < _MIN_ROWS_PER_CLASS]
    if len(rare):
        label = rare.index[0]
        raise DataError(
            f"class {label!r} has {int(rare.iloc[0])} rows; each class needs at least "
            f"{_MIN_ROWS_PER_CLASS} to appear in train, val and test",
            column=data.target,
            rows=list(table.loc[target == label, data.id]),
        )


def _resolve_images(paths: pd.Series, root: Path, column: str, report: AlignReport) -> pd.Series:
    """Paths relative to the root for usable images; null for missing or escaping ones.

    A path that leads outside image_root (`..`, absolute, or a symlink out) is never opened:
    params must not become a way to read arbitrary files.
    """
    root_resolved = root.resolve()
    resolved: list[str | None] = []
    refused = missing = 0
    for value in paths:
        if value is pd.NA or value is None or not str(value).strip():
            resolved.append(None)
            continue
        candidate = Path(str(value).strip())
        full = (root / candidate).resolve()
        if candidate.is_absolute() or not full.is_relative_to(root_resolved):
            refused += 1
            resolved.append(None)
        elif not full.is_file():
            missing += 1
            resolved.append(None)
        else:
            resolved.append(full.relative_to(root_resolved).as_posix())
    report.images_missing[column] = missing
    report.images_refused[column] = refused
    if refused:
        log.warning("%s: %d image paths lead outside %s and were refused", column, refused, root)
    if missing:
        log.warning("%s: %d image files do not exist under %s", column, missing, root)
    return pd.Series(resolved, index=paths.index, dtype="string")


def _digests(paths: pd.Series, root: Path) -> pd.Series:
    digests = [None if pd.isna(p) else hashlib.sha256((root / str(p)).read_bytes()).hexdigest() for p in paths]
    return pd.Series(digests, index=paths.index, dtype="string")


def _presence(values: pd.Series) -> pd.Series:
    present = values.notna()
    if pd.api.types.is_string_dtype(values):
        present &= values.fillna("").str.strip().ne("")
    return present


def _split(data: DataConfig, aligned: pd.DataFrame, given: pd.Series | None) -> np.ndarray:
    fractions = data.split.fractions
    target = aligned[TARGET].to_numpy()
    if given is not None:
        labels = given.reindex(aligned[ID]).astype("string").str.strip().str.lower().map(_SPLIT_ALIASES)
        unknown = labels.isna()
        if unknown.any():
            raise DataError(
                "split values must be train, val or test",
                column=data.split.column,
                rows=list(aligned.loc[unknown.to_numpy(), ID]),
            )
        split = labels.to_numpy(dtype=object)
        if not (split == "val").any():
            train_idx = np.flatnonzero(split == "train")
            val_count = round(len(train_idx) * fractions.val / (fractions.train + fractions.val))
            _, val_idx = _carve(data, train_idx, val_count, target)
            split[val_idx] = "val"
        return split.astype(str)
    index = np.arange(len(aligned))
    # Row counts, not fractions: sklearn rounds a fractional size up, so float error in
    # 0.15 / 0.85 would move a row (200 rows gave 139/31/30 rather than 140/30/30).
    rest, test_idx = _carve(data, index, round(len(index) * fractions.test), target)
    train_idx, val_idx = _carve(data, rest, round(len(index) * fractions.val), target)
    split = np.empty(len(aligned), dtype=object)
    split[train_idx], split[val_idx], split[test_idx] = "train", "val", "test"
    return split.astype(str)


def _carve(
    data: DataConfig, index: np.ndarray, count: int, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, carved): `count` rows of `index` drawn at random, stratified for classification."""
    count = min(max(count, 1), len(index) - 1)
    stratify = target[index] if data.task != "regression" else None
    try:
        kept, carved = train_test_split(
            index, test_size=count, random_state=data.split.seed, stratify=stratify
        )
    except ValueError as err:
        raise DataError(
            f"cannot split {len(index)} rows into the configured fractions ({err})", column=data.target
        ) from None
    return kept, carved
