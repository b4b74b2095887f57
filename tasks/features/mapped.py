"""Feature files as memory-mapped arrays: train and evaluate read blocks without holding them.

A Parquet feature file has to be decoded before its floats can be used, so reading it whole
costs its size in memory, and the split copies that followed cost it again. Here each block
is decoded once, row group by row group, into an `.npy` file under the cache directory and
then memory-mapped: the OS pages rows in as batches touch them and can drop them again, so
a stage needs the feature file's size on disk plus a bounded working set, not its size in
RAM. Train and evaluate share the decoded copy. Where it cannot be written (a full disk, a
file size limit), the blocks are read into memory instead, with a warning: a memo never
fails a run.

Copies are keyed by the feature file's identity (path, size, mtime, inode), written into a
temp directory and renamed into place, so a reader never sees half a copy; older copies of
the same feature file are removed when a new one is made. Arrays are mapped copy-on-write
(`mmap_mode="c"`): torch can wrap them without a read-only warning, and nothing written
through them reaches the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tasks.atomic import reserved_memmap, write_json
from tasks.features.feature_store import ID, PRESENT, read_blocks, schema_metadata

log = logging.getLogger(__name__)

FORMAT = 1
BATCH_ROWS = 16_384  # rows decoded at a time: the conversion's working set


def mapped_root(cache_dir: str | Path) -> Path:
    """Where the decoded copies live: beside the embedding cache, a memo like it."""
    return Path(cache_dir) / "mapped"


def mapped_blocks(
    path: Path, root: Path
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """(ids, blocks, presence, metadata) like feature_store.read_blocks, blocks memory-mapped.

    Blocks keep the dtype they were stored in (float32, or float16 with `cache.dtype`);
    presence masks and ids are small and read into memory.
    """
    path = Path(path)
    parquet = pq.ParquetFile(path)
    metadata = schema_metadata(parquet.schema_arrow)  # the footer ParquetFile has already read
    ids = np.asarray(parquet.read(columns=[ID]).column(ID).to_pylist(), dtype=object)
    try:
        directory = _decoded(path, parquet, Path(root))
    except OSError as err:  # a full disk or a file size limit: the copy is a memo, the run goes on
        log.warning("no decoded copy of %s under %s (%s); reading it into memory", path, root, err)
        _, blocks, present, _ = read_blocks(path)
        return ids, blocks, present, metadata
    names = json.loads((directory / "blocks.json").read_text())["blocks"]
    blocks = {name: np.load(directory / f"{name}.npy", mmap_mode="c") for name in names}
    present = {name: np.load(directory / f"{PRESENT}{name}.npy") for name in names}
    return ids, blocks, present, metadata


def _decoded(path: Path, parquet: pq.ParquetFile, root: Path) -> Path:
    """The directory holding this version of the file's blocks as .npy, made if missing."""
    source = str(path.resolve())
    info = path.stat()
    key = hashlib.sha256(
        json.dumps([FORMAT, source, info.st_size, info.st_mtime_ns, info.st_ino]).encode()
    ).hexdigest()[:32]
    directory = root / key
    if (directory / "blocks.json").is_file():
        return directory
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        names = _write_arrays(parquet, tmp)
        write_json({"source": source, "blocks": names}, tmp / "blocks.json")
        try:
            tmp.rename(directory)
        except OSError:  # another process made the same copy meanwhile: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_older_copies(root, source, keep=directory)
    return directory


def _write_arrays(parquet: pq.ParquetFile, directory: Path) -> list[str]:
    """Decode every block into (N, D) and (N,) .npy files, BATCH_ROWS rows at a time."""
    schema = parquet.schema_arrow
    names = [n for n in schema.names if n != ID and not n.startswith(PRESENT)]
    rows = parquet.metadata.num_rows
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        kind = schema.field(name).type
        dtype = np.dtype(kind.value_type.to_pandas_dtype())
        arrays[name] = reserved_memmap(directory / f"{name}.npy", dtype, (rows, kind.list_size))
        arrays[PRESENT + name] = reserved_memmap(directory / f"{PRESENT}{name}.npy", np.dtype(bool), (rows,))
    start = 0
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=list(arrays)):
        stop = start + batch.num_rows
        for name in names:
            column = batch.column(name)
            width = column.type.list_size
            values = column.flatten().to_numpy(zero_copy_only=False)
            arrays[name][start:stop] = values.reshape(-1, width)
            arrays[PRESENT + name][start:stop] = batch.column(PRESENT + name).to_numpy(zero_copy_only=False)
        start = stop
    for array in arrays.values():
        array.flush()
    return names


def _remove_older_copies(root: Path, source: str, keep: Path) -> None:
    """Drop decoded copies of earlier versions of the same feature file: they are never read again."""
    for other in root.iterdir():
        if other == keep or not (other / "blocks.json").is_file():
            continue
        try:
            if json.loads((other / "blocks.json").read_text()).get("source") == source:
                shutil.rmtree(other, ignore_errors=True)
        except (OSError, json.JSONDecodeError):
            continue
