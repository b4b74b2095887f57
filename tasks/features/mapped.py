"""Feature files as memory-mapped arrays: train and evaluate read blocks without holding them.

A Parquet feature file has to be decoded before its floats can be used, so reading it whole
costs its size in memory, and the split copies that followed cost it again. Here each block
is decoded once, row group by row group, into an `.npy` file under the cache directory and
then memory-mapped: the OS pages rows in as batches touch them and can drop them again, so
a stage needs the feature file's size on disk plus a bounded working set, not its size in
RAM. Train and evaluate share the decoded copy. Where it cannot be written (a full disk, a
file size limit), the blocks are read into memory instead, with a warning: a memo never
fails a run.

Copies are keyed by the feature file's identity (path, size, mtime, inode, and a CRC of its
first and last MiB, which hold its header and footer), written into a temp directory and
renamed into place, so a reader never sees half a copy; older copies of the same feature
file are removed when a new one is made. Arrays are mapped copy-on-write (`mmap_mode="c"`):
torch can wrap them without a read-only warning, and nothing written through them reaches
the file.

A copy is checked before every use, because nothing else would notice damage to it: a file
zeroed or cut short in place, or one flipped bit, would otherwise train a model on wrong
numbers without a word. Its record (`blocks.json`, written last) holds the size and CRC-32
of each .npy as written; a copy whose record, sizes or checksums disagree is reported,
thrown away and decoded again from the feature file. Checking reads the copy once at 3-4
GB/s (tasks/features/cache/checksum.py), which train and evaluate then read anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tasks.atomic import reserved_memmap, write_json
from tasks.features.cache.checksum import crc32_of, file_crc32, stamp
from tasks.features.feature_store import ID, PRESENT, read_blocks, schema_metadata

log = logging.getLogger(__name__)

FORMAT = 2  # 2: the record holds each file's size and CRC-32, checked before every use
BATCH_ROWS = 16_384  # rows decoded at a time: the conversion's working set
RECORD = "blocks.json"
SAMPLE_BYTES = 1 << 20  # of the feature file's head and tail, in a copy's key


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
    names = block_names(parquet)
    try:
        directory = _decoded(path, parquet, Path(root))
        blocks = {name: np.load(directory / f"{name}.npy", mmap_mode="c") for name in names}
        present = {name: np.load(directory / f"{PRESENT}{name}.npy") for name in names}
    except (OSError, ValueError) as err:  # a full disk, a size limit, a copy damaged after its check
        log.warning("no decoded copy of %s under %s (%s); reading it into memory", path, root, err)
        _, blocks, present, _ = read_blocks(path)
    return ids, blocks, present, metadata


def block_names(parquet: pq.ParquetFile) -> list[str]:
    """The feature file's blocks, in file order (what a copy must hold, no more, no less)."""
    return [n for n in parquet.schema_arrow.names if n != ID and not n.startswith(PRESENT)]


def _decoded(path: Path, parquet: pq.ParquetFile, root: Path) -> Path:
    """The directory holding this version of the file's blocks as .npy: checked, or made anew."""
    source = str(path.resolve())
    directory = root / _key(path, source)
    if directory.exists():
        problem = _damage(directory, source, parquet)
        if problem is None:
            return directory
        log.warning("decoded copy of %s is damaged (%s); decoding it again", path, problem)
        _discard(directory)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=root))
    try:
        names = _write_arrays(parquet, tmp)
        write_json(_record(tmp, source, parquet.metadata.num_rows, names), tmp / RECORD)  # last
        try:
            tmp.rename(directory)
        except OSError:  # another process made the same copy meanwhile: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_older_copies(root, source, keep=directory)
    return directory


def _key(path: Path, source: str) -> str:
    """This version of the feature file: where it is, its inode, size and mtime, and a CRC of
    its head and tail (the Parquet footer, which moves with any change of size or content of
    a row group), so a file rewritten in place within the clock's resolution is still new.
    """
    info = path.stat()
    with open(path, "rb") as handle:
        sample = crc32_of(handle.read(SAMPLE_BYTES))
        handle.seek(max(info.st_size - SAMPLE_BYTES, 0))
        sample = crc32_of(handle.read(SAMPLE_BYTES), sample)
    identity = [FORMAT, source, info.st_size, info.st_mtime_ns, info.st_ino, sample]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


def _files(names: list[str]) -> list[str]:
    return [file for name in names for file in (f"{name}.npy", f"{PRESENT}{name}.npy")]


def _record(directory: Path, source: str, rows: int, names: list[str]) -> dict:
    """What a copy holds, with each file's size and CRC-32 as written."""
    files = {}
    for file in _files(names):
        size, crc = file_crc32(directory / file)
        files[file] = {"size": size, "crc32": stamp(crc)}
    return {"format": FORMAT, "source": source, "rows": rows, "blocks": names, "files": files}


def _damage(directory: Path, source: str, parquet: pq.ParquetFile) -> str | None:
    """What is wrong with a copy (naming the file), or None when every file is as written.

    Sizes are compared first, so a truncated or extended file costs no reading.
    """
    try:
        record = json.loads((directory / RECORD).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{directory / RECORD} is unreadable: {type(err).__name__}"
    names = block_names(parquet)
    expected = {"format": FORMAT, "source": source, "rows": parquet.metadata.num_rows, "blocks": names}
    files = record.get("files") if isinstance(record, dict) else None
    if (
        not isinstance(files, dict)
        or any(record.get(k) != v for k, v in expected.items())
        or sorted(files) != sorted(_files(names))
        or not all(isinstance(entry, dict) for entry in files.values())
    ):
        return f"{directory / RECORD} does not describe {source}"
    try:
        for file, entry in files.items():
            size = (directory / file).stat().st_size
            if size != entry.get("size"):
                return f"{directory / file} has {size} bytes, {entry.get('size')} were written"
        for file, entry in files.items():
            if stamp(file_crc32(directory / file)[1]) != entry.get("crc32"):
                return f"{directory / file} does not match its checksum"
    except OSError as err:
        return f"{directory} cannot be read: {err}"
    return None


def _discard(directory: Path) -> None:
    """Move a damaged copy aside (so the name is free at once), then delete it.

    A process still mapping its files keeps its pages; a second one discarding the same copy
    finds it gone, which is fine. Anything else (a read-only cache) is raised to the caller,
    which reads the blocks into memory instead.
    """
    aside = directory.with_name(f".{directory.name}.damaged-{secrets.token_hex(4)}")
    try:
        directory.rename(aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _write_arrays(parquet: pq.ParquetFile, directory: Path) -> list[str]:
    """Decode every block into (N, D) and (N,) .npy files, BATCH_ROWS rows at a time."""
    schema = parquet.schema_arrow
    names = block_names(parquet)
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
        if other == keep or not (other / RECORD).is_file():
            continue
        try:
            record = json.loads((other / RECORD).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # damaged: dropped when its own version is next asked for
        if isinstance(record, dict) and record.get("source") == source:
            shutil.rmtree(other, ignore_errors=True)
