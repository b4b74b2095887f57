"""Cache keys for a table's cells: which distinct contents a modality holds and where.

Cells are keyed by content only (see cache_keys.py), so every row holding the same value or
the same file shares one slot, across rows and across columns of one modality. The plug-ins
(tasks/modalities) build these, and the feature cache (tasks/features/cache) fills the slots
and writes the blocks, so this sits below both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.cache_keys import digest_from_hex
from tasks.errors import DataError
from tasks.schema import DIGEST, ID, PRESENT


@dataclass(frozen=True)
class BlockRows:
    """One feature block: for every table row, its content's slot (-1 when the cell is absent)."""

    name: str
    slots: np.ndarray  # (rows,) int64


@dataclass
class Contents:
    """The distinct contents of a modality's cells, and which cell uses which."""

    keys: list[bytes] = field(default_factory=list)  # content digests, first-seen order
    sources: list[Any] = field(default_factory=list)  # the value, or the file's Path, per key
    first_cell: list[tuple[str, str]] = field(default_factory=list)  # (row id, column) per key
    blocks: list[BlockRows] = field(default_factory=list)
    values: int = 0  # non-empty cells


def contents_by_value(
    table: pd.DataFrame, columns: list[str], prefix: str, key_of: Callable[[str], bytes]
) -> Contents:
    """Distinct cell values across `columns` (one encoder, so e.g. titles and descriptions share)."""
    contents = Contents()
    slot_of: dict[bytes, int] = {}
    ids = table[ID].astype(str).to_numpy()
    for column in columns:
        mask = table[PRESENT + column].to_numpy(dtype=bool)
        values = table[column].to_numpy(dtype=object)
        slots = np.full(len(table), -1, dtype=np.int64)
        for row in np.flatnonzero(mask):
            value = str(values[row])
            key = key_of(value)
            slot = slot_of.get(key)
            if slot is None:
                slot = slot_of[key] = len(contents.keys)
                contents.keys.append(key)
                contents.sources.append(value)
                contents.first_cell.append((ids[row], column))
            slots[row] = slot
        contents.values += int(mask.sum())
        contents.blocks.append(BlockRows(f"{prefix}.{column}", slots))
    return contents


def contents_by_digest(
    table: pd.DataFrame, columns: list[str], root: Path, source: str, prefix: str
) -> Contents:
    """Distinct files by the digests align recorded; the same file twice is one key.

    `source` names the aligned table in errors.
    """
    contents = Contents()
    slot_of: dict[bytes, int] = {}
    ids = table[ID].astype(str).to_numpy()
    for column in columns:
        if DIGEST + column not in table.columns:
            raise DataError("no file digests; rerun align", file=source, column=DIGEST + column)
        mask = table[PRESENT + column].to_numpy(dtype=bool) & table[column].notna().to_numpy()
        digests = table[DIGEST + column].to_numpy(dtype=object)
        paths = table[column].to_numpy(dtype=object)
        slots = np.full(len(table), -1, dtype=np.int64)
        bad: list[str] = []
        for row in np.flatnonzero(mask):
            value = digests[row]
            key = None if pd.isna(value) else digest_from_hex(str(value))
            if key is None:
                bad.append(ids[row])
                continue
            slot = slot_of.get(key)
            if slot is None:
                slot = slot_of[key] = len(contents.keys)
                contents.keys.append(key)
                contents.sources.append(root / str(paths[row]))
                contents.first_cell.append((ids[row], column))
            slots[row] = slot
        if bad:
            raise DataError(
                "not a SHA-256 hex digest; rerun align", file=source, column=DIGEST + column, rows=bad
            )
        contents.values += int((slots >= 0).sum())
        contents.blocks.append(BlockRows(f"{prefix}.{column}", slots))
    return contents
