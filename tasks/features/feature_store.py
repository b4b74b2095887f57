"""Feature files: one Parquet per modality, one fixed-size float list column per block.

Fixed-size lists keep each embedding contiguous, so reading a block back into a dense
(N, D) array is a zero-copy reshape rather than a per-row Python loop.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.atomic import write_parquet

ID = "row_id"
PRESENT = "present__"
META_KEY = b"fuseline"
# cache.dtype -> (numpy, Arrow) type of the stored embeddings
STORED = {"float32": (np.float32, pa.float32()), "float16": (np.float16, pa.float16())}


def write_blocks(
    path: Path,
    ids: np.ndarray,
    blocks: dict[str, np.ndarray],
    present: dict[str, np.ndarray],
    metadata: dict,
    dtype: str = "float32",
) -> None:
    """Write embeddings (N, D) per block with presence masks and JSON metadata, atomically.

    `dtype` float16 (`cache.dtype`) halves the file and what train maps of it.
    """
    columns: dict[str, pa.Array] = {ID: pa.array(ids.astype(str), type=pa.string())}
    for name in sorted(blocks):
        matrix = np.ascontiguousarray(blocks[name], dtype=STORED[dtype][0])
        width = matrix.shape[1]
        flat = pa.array(matrix.reshape(-1), type=STORED[dtype][1])
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, width)
        columns[PRESENT + name] = pa.array(present[name].astype(bool), type=pa.bool_())
    table = pa.table(columns)
    table = table.replace_schema_metadata({META_KEY: json.dumps(metadata, sort_keys=True).encode()})
    write_parquet(table, path)


def read_metadata(path: Path) -> dict:
    """The JSON metadata alone (encoder fingerprint, fitted states): the schema, not the blocks."""
    return schema_metadata(pq.read_schema(path))


def schema_metadata(schema: pa.Schema) -> dict:
    """The JSON metadata a feature file's schema carries ({} when it has none)."""
    return json.loads((schema.metadata or {}).get(META_KEY, b"{}"))


def read_blocks(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """(ids, blocks, presence, metadata) as written by write_blocks; blocks as float32."""
    table = pq.read_table(path)
    metadata = schema_metadata(table.schema)
    ids = np.asarray(table.column(ID).to_pylist(), dtype=object)
    blocks: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for name in table.column_names:
        if name == ID or name.startswith(PRESENT):
            continue
        column = table.column(name).combine_chunks()
        width = column.type.list_size
        values = column.flatten().to_numpy(zero_copy_only=False)
        blocks[name] = values.reshape(-1, width).astype(np.float32, copy=False)
        present[name] = table.column(PRESENT + name).to_numpy(zero_copy_only=False).astype(bool)
    return ids, blocks, present, metadata
