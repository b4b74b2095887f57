"""Content-addressed Parquet shards: the one place cache entries are written and read.

A shard holds (key, vector, ok) for a chunk of encoded contents and is named by the SHA-256
of its own bytes. It is written to a temp file, fsynced and renamed into `shards/`, so:

- the directory listing *is* the index, and a name appears only once its file is complete:
  `kill -9` mid-write leaves a hidden `.tmp` file that nothing reads (swept after a day);
- the name is the checksum: every shard is verified before its vectors are used, and one
  that fails (bit rot, a truncated copy) is reported, deleted and its rows recomputed;
- runs sharing a cache never write the same path with different bytes and never rewrite
  an index file, so two of them at once cannot corrupt each other (at worst both encode the
  same rows, and identical results even land on the same name).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.atomic import write_bytes, write_json
from tasks.cache_keys import DIGEST_BYTES

KEY, VECTOR, OK = "key", "vector", "ok"
SHARDS = "shards"
INFO = "namespace.json"
_SHARD_NAME = re.compile(r"[0-9a-f]{64}")
_STALE_TEMP_SECONDS = 24 * 3600

log = logging.getLogger(__name__)


# Each shard's key column as read once in this process, by path (see ShardStore.scan).
_KEYS_READ: dict[Path, np.ndarray] = {}


def _shard_keys(path: Path) -> np.ndarray:
    """A shard's keys, read from its file the first time only."""
    keys = _KEYS_READ.get(path)
    if keys is None:
        column = pq.ParquetFile(path).read(columns=[KEY]).column(KEY)
        if column.type != pa.binary(DIGEST_BYTES):
            raise CorruptShard(f"key column has type {column.type}")
        keys = _KEYS_READ[path] = column.to_numpy(zero_copy_only=False)
    return keys


class CorruptShard(Exception):
    """A shard whose bytes no longer match its name, or that Parquet cannot read."""


@dataclass(frozen=True)
class Shard:
    keys: list[bytes]
    vectors: np.ndarray  # (n, dim) float32
    ok: np.ndarray  # (n,) bool: False for contents the encoder could not read (undecodable image)


@dataclass
class ShardIndex:
    """Where each cached key lives: one entry per key (the first shard that holds it wins)."""

    shards: list[str] = field(default_factory=list)
    keys: pd.Index = field(default_factory=lambda: pd.Index([], dtype=object))
    shard: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    corrupt: list[str] = field(default_factory=list)

    def locate(self, wanted: list[bytes]) -> np.ndarray:
        """Position in this index for each wanted key, -1 where it is not cached."""
        if not wanted:
            return np.zeros(0, np.int64)
        return self.keys.get_indexer(pd.Index(wanted, dtype=object))


class ShardStore:
    """The shards of one namespace (one encoder + preprocessing)."""

    def __init__(self, directory: Path, dim: int) -> None:
        self.directory = Path(directory)
        self.dim = dim
        self.shard_dir = self.directory / SHARDS

    def describe(self, info: dict) -> None:
        """Leave the fingerprint beside the shards, for people; the cache never reads it."""
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        if not (self.directory / INFO).exists():
            write_json(info, self.directory / INFO)

    def names(self) -> list[str]:
        if not self.shard_dir.is_dir():
            return []
        return sorted(p.stem for p in self.shard_dir.glob("*.parquet") if _SHARD_NAME.fullmatch(p.stem))

    def path(self, name: str) -> Path:
        return self.shard_dir / f"{name}.parquet"

    def scan(self) -> ShardIndex:
        """Read the key column of every committed shard (a few KB each, not the vectors).

        Each shard's keys are read once per process (`_shard_keys`): a name is its checksum, so
        a shard never changes under it. A notebook predicting a row at a time commits a shard
        per call, and re-reading every earlier shard's keys made each call 0.28 ms slower than
        the one before it.
        """
        self._sweep_stale_temp_files()
        index = ShardIndex()
        key_arrays: list[np.ndarray] = []
        shard_ids: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        for name in self.names():
            try:
                keys = _shard_keys(self.path(name))
            except FileNotFoundError:
                continue  # another run discarded it a moment ago
            except (CorruptShard, pa.ArrowException, OSError) as err:
                self.discard(name, f"unreadable ({err})")
                index.corrupt.append(name)
                continue
            position = len(index.shards)
            index.shards.append(name)
            key_arrays.append(keys)
            shard_ids.append(np.full(len(keys), position, np.int32))
            rows.append(np.arange(len(keys), dtype=np.int32))
        if key_arrays:
            all_keys = pd.Index(np.concatenate(key_arrays), dtype=object)
            first = ~all_keys.duplicated()
            index.keys = all_keys[first]
            index.shard = np.concatenate(shard_ids)[first]
            index.row = np.concatenate(rows)[first]
        return index

    def commit(self, keys: list[bytes], vectors: np.ndarray, ok: np.ndarray) -> str:
        """Write one shard atomically under the name of its checksum; returns that name."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dim) or ok.shape != (len(keys),):
            raise ValueError(
                f"shard shapes disagree: {len(keys)} keys, vectors {vectors.shape}, ok {ok.shape}"
            )
        table = pa.table(
            {
                KEY: pa.array(keys, type=pa.binary(DIGEST_BYTES)),
                VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dim),
                OK: pa.array(ok.astype(bool)),
            }
        )
        sink = pa.BufferOutputStream()
        # Embeddings do not compress; plain pages make writing and reading them a memcpy.
        pq.write_table(table, sink, compression="none", use_dictionary=False, write_statistics=False)
        data = sink.getvalue().to_pybytes()
        name = hashlib.sha256(data).hexdigest()
        if not self.path(name).exists():  # the same bytes under the same name: nothing to do
            write_bytes(data, self.path(name))
        return name

    def read(self, name: str) -> Shard:
        """A shard's contents, after checking its bytes against its name."""
        data = self.path(name).read_bytes()
        if hashlib.sha256(data).hexdigest() != name:
            raise CorruptShard("checksum mismatch")
        try:
            table = pq.read_table(pa.BufferReader(data))
            keys = table.column(KEY).to_pylist()
            vectors = table.column(VECTOR).combine_chunks()
            flat = vectors.flatten().to_numpy(zero_copy_only=False)
            ok = table.column(OK).to_numpy(zero_copy_only=False).astype(bool)
        except (pa.ArrowException, KeyError) as err:
            raise CorruptShard(str(err)) from err
        if vectors.type.list_size != self.dim or len(flat) != len(keys) * self.dim:
            raise CorruptShard(f"vectors are {vectors.type}, expected {self.dim} floats per key")
        return Shard(keys=keys, vectors=flat.reshape(len(keys), self.dim), ok=ok)

    def discard(self, name: str, reason: str) -> None:
        log.warning("cache shard %s is %s; deleted, its rows will be recomputed", self.path(name), reason)
        _KEYS_READ.pop(self.path(name), None)
        self.path(name).unlink(missing_ok=True)

    def _sweep_stale_temp_files(self) -> None:
        """Temp files of killed writers; a day old means no live writer owns them."""
        if not self.shard_dir.is_dir():
            return
        cutoff = time.time() - _STALE_TEMP_SECONDS
        for temp in self.shard_dir.glob(".*.tmp"):
            try:
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()
            except FileNotFoundError:
                pass
