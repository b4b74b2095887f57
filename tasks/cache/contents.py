"""Cache keys for a table's cells: which distinct contents a modality holds and where.

Cells are keyed by content only (see keys.py), so every row holding the same text or the
same image file shares one slot, across rows and across columns of one modality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.align import DIGEST, ID, PRESENT
from tasks.cache.gather import BlockRows
from tasks.cache.keys import digest_from_hex, text_digest
from tasks.errors import DataError


@dataclass
class Contents:
    """The distinct contents of a modality's cells, and which cell uses which."""

    keys: list[bytes] = field(default_factory=list)  # content digests, first-seen order
    sources: list[Any] = field(default_factory=list)  # the text, or the image's Path, per key
    first_cell: list[tuple[str, str]] = field(default_factory=list)  # (row id, column) per key
    blocks: list[BlockRows] = field(default_factory=list)
    values: int = 0  # non-empty cells


def text_contents(aligned: pd.DataFrame, columns: list[str]) -> Contents:
    """Distinct texts across all text columns (one encoder, so titles and descriptions share)."""
    contents = Contents()
    slot_of: dict[bytes, int] = {}
    ids = aligned[ID].astype(str).to_numpy()
    for column in columns:
        mask = aligned[PRESENT + column].to_numpy(dtype=bool)
        values = aligned[column].to_numpy(dtype=object)
        slots = np.full(len(aligned), -1, dtype=np.int64)
        for row in np.flatnonzero(mask):
            text = str(values[row])
            key = text_digest(text)
            slot = slot_of.get(key)
            if slot is None:
                slot = slot_of[key] = len(contents.keys)
                contents.keys.append(key)
                contents.sources.append(text)
                contents.first_cell.append((ids[row], column))
            slots[row] = slot
        contents.values += int(mask.sum())
        contents.blocks.append(BlockRows(f"text.{column}", slots))
    return contents


def image_contents(aligned: pd.DataFrame, columns: list[str], image_root: Path, source: str) -> Contents:
    """Distinct images by the file digests align recorded; the same photo twice is one key.

    `source` names the aligned table in errors.
    """
    contents = Contents()
    slot_of: dict[bytes, int] = {}
    ids = aligned[ID].astype(str).to_numpy()
    for column in columns:
        if DIGEST + column not in aligned.columns:
            raise DataError("no image digests; rerun align", file=source, column=DIGEST + column)
        mask = aligned[PRESENT + column].to_numpy(dtype=bool) & aligned[column].notna().to_numpy()
        digests = aligned[DIGEST + column].to_numpy(dtype=object)
        paths = aligned[column].to_numpy(dtype=object)
        slots = np.full(len(aligned), -1, dtype=np.int64)
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
                contents.sources.append(image_root / str(paths[row]))
                contents.first_cell.append((ids[row], column))
            slots[row] = slot
        if bad:
            raise DataError(
                "not a SHA-256 hex digest; rerun align", file=source, column=DIGEST + column, rows=bad
            )
        contents.values += int((slots >= 0).sum())
        contents.blocks.append(BlockRows(f"image.{column}", slots))
    return contents
