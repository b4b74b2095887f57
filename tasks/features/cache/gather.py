"""From cache entries to the per-modality feature file, in bounded memory.

Each distinct content gets one slot in a disk-backed (n, dim) array filled from cache hits
and freshly encoded chunks; the feature file is then streamed out row group by row group.
Peak memory is one shard or one row group, not the whole (rows, dim) matrix, so a dataset
whose embeddings exceed RAM still extracts. The file format is `tasks/features/feature_store.py`'s
(train and evaluate read it with `read_blocks`); only the writing is streamed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.atomic import atomic_path, reserved_memmap
from tasks.contents import BlockRows
from tasks.features.feature_store import ID, META_KEY, PRESENT, STORED

ROWS_PER_GROUP = 16_384
_STALE_SECONDS = 24 * 3600


class SlotVectors:
    """One (dim,) float32 vector and an ok flag per distinct content, backed by a temp file."""

    def __init__(self, count: int, dim: int, scratch: Path) -> None:
        scratch.mkdir(parents=True, exist_ok=True)
        _sweep_stale(scratch)
        self._dir = Path(tempfile.mkdtemp(prefix="slots-", dir=scratch))
        self.dim = dim
        if count:
            try:
                self.vectors = reserved_memmap(self._dir / "vectors.npy", np.float32, (count, dim))
            except BaseException:
                shutil.rmtree(self._dir, ignore_errors=True)
                raise
        else:
            self.vectors = np.zeros((0, dim), np.float32)
        self.ok = np.zeros(count, dtype=bool)  # (count,)
        self.filled = np.zeros(count, dtype=bool)  # (count,)

    def put(self, slots: np.ndarray, vectors: np.ndarray, ok: np.ndarray) -> None:
        self.vectors[slots] = vectors
        self.ok[slots] = ok
        self.filled[slots] = True

    def close(self) -> None:
        self.vectors = np.zeros((0, self.dim), np.float32)  # drop the mapping before deleting it
        shutil.rmtree(self._dir, ignore_errors=True)


def _sweep_stale(scratch: Path) -> None:
    """Scratch arrays of killed runs; a day old means no live run owns them."""
    cutoff = time.time() - _STALE_SECONDS
    for directory in scratch.glob("slots-*"):
        try:
            if directory.stat().st_mtime < cutoff:
                shutil.rmtree(directory, ignore_errors=True)
        except FileNotFoundError:
            pass


def write_feature_file(
    path: Path,
    ids: np.ndarray,
    blocks: list[BlockRows],
    slots: SlotVectors,
    metadata: dict,
    dtype: str = "float32",
) -> None:
    """Write `feature_store` format atomically; a row is present when its slot exists and is ok.

    `dtype` (`cache.dtype`) is how the file stores the vectors; the cache keeps float32.
    """
    numpy_type, arrow_type = STORED[dtype]
    ordered = sorted(blocks, key=lambda block: block.name)
    fields = [pa.field(ID, pa.string())]
    for block in ordered:
        fields.append(pa.field(block.name, pa.list_(arrow_type, slots.dim)))
        fields.append(pa.field(PRESENT + block.name, pa.bool_()))
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(metadata, sort_keys=True).encode()})
    ids = np.asarray(ids).astype(str)
    # Embeddings neither repeat nor have useful min/max: dictionary pages and statistics on
    # them took 4x the write time (and made the file 20 % bigger), so only the ids get them.
    plain_vectors = {"use_dictionary": [ID], "write_statistics": [ID]}
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, **plain_vectors) as writer:
        for start in range(0, max(len(ids), 1), ROWS_PER_GROUP):
            stop = min(start + ROWS_PER_GROUP, len(ids))
            columns: list[pa.Array] = [pa.array(ids[start:stop], type=pa.string())]
            for block in ordered:
                slot = block.slots[start:stop]
                have = slot >= 0
                present = np.zeros(len(slot), dtype=bool)
                present[have] = slots.ok[slot[have]]
                matrix = np.zeros((len(slot), slots.dim), dtype=np.float32)  # (group, dim)
                matrix[present] = slots.vectors[slot[present]]
                flat = pa.array(matrix.reshape(-1).astype(numpy_type, copy=False), type=arrow_type)
                columns.append(pa.FixedSizeListArray.from_arrays(flat, slots.dim))
                columns.append(pa.array(present, type=pa.bool_()))
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
