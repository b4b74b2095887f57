"""The two sides of a drift check: the training reference and the batch to compare with it.

Both are aligned-like tables (row_id, the declared columns typed as align types them,
`present__` masks, `sha256__` file digests), so every check reads them the same way:

- reference: the train rows of data/aligned/aligned.parquet, the rows the model learned
  from (and, for the model's own output, the val and test rows it did not learn from);
- batch: a file of new rows, read the way `fuseline predict` reads them, or else the
  current source tables read as ingest and align read them (the scheduled case: the
  sources have grown or changed since the model was trained).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from tasks.config import DataConfig
from tasks.data.align import align
from tasks.data.ingest import ingest_sources, read_snapshots
from tasks.errors import DataError
from tasks.paths import Layout
from tasks.schema import SPLIT
from tasks.serve.predict import Roots, read_new_rows


def aligned_rows(layout: Layout) -> pd.DataFrame:
    """The aligned table of the last pipeline run; a one-line error when there is none yet."""
    if not layout.aligned.is_file():
        raise DataError(
            "no training reference: the aligned table is missing; run the pipeline first (dvc repro)",
            file=str(layout.aligned),
        )
    return pd.read_parquet(layout.aligned)


def split_rows(aligned: pd.DataFrame, *splits: str) -> pd.DataFrame:
    return aligned[aligned[SPLIT].isin(splits)].reset_index(drop=True)


def batch_from_file(path: str | Path, data: DataConfig, roots: Roots) -> pd.DataFrame:
    """New rows from a csv, parquet or jsonl file, exactly as batch prediction reads them."""
    return read_new_rows(path, data, roots)


def batch_from_sources(data: DataConfig) -> pd.DataFrame:
    """Every row the sources hold now, snapshotted and aligned as the pipeline would (in a temp dir)."""
    with tempfile.TemporaryDirectory(prefix="fuseline-monitor-") as tmp:
        ingest_sources(data, Path(tmp) / "raw")
        aligned, _ = align(data, read_snapshots(Path(tmp) / "raw"))
    return aligned


def sample_rows(rows: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most `max_rows` rows, drawn with `seed` (the same rows every run), in their original order."""
    if len(rows) <= max_rows:
        return rows.reset_index(drop=True)
    return rows.sample(n=max_rows, random_state=seed).sort_index().reset_index(drop=True)
