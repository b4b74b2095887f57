"""The feature cache as the API server uses it: the project's shards read, new vectors kept in memory.

`fuseline predict` commits what it encodes as one shard per chunk, which suits batches of
thousands of rows. A server encodes a few rows per request: a shard each would leave
thousands of tiny files, and every lookup scans every shard's keys (0.25 ms a shard), so
latency would grow with the requests served. Here the project's shards are scanned once
(again only when their directory changes), verified shards stay in memory, and what the
server encodes goes into one bounded in-memory table, never to disk. The vectors are the
ones `fuseline predict` would compute and read: the lookups and encodes are extraction's own
(tasks/features/extract.py), only where the entries live differs.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from tasks.cache_keys import namespace_of
from tasks.features.cache import FeatureCache
from tasks.features.cache.store import Shard, ShardIndex, ShardStore

MEMORY = "memory"  # the name of the in-memory shard in a ServingStore's index
DEFAULT_MEMORY_KEYS = 100_000  # encoded contents kept per namespace before the table starts over
DISK_SHARD_BYTES = 512 * 2**20  # verified project shards kept in memory, per namespace
MEMORY_FS = Path("/dev/shm")  # tmpfs on Linux: files that never touch a disk


def scratch_dir(fallback: Path) -> Path:
    """A private directory for extraction's per-request slot arrays: in memory where the system has
    a tmpfs, else `fallback`.

    Extraction keeps them in memory-mapped files whose blocks are reserved up front; making and
    deleting one per modality per request cost 8 ms a request on an ext4 disk mounted with
    `discard`, 0.7 ms on tmpfs. They hold a few rows' vectors: kilobytes.
    """
    if MEMORY_FS.is_dir() and os.access(MEMORY_FS, os.W_OK | os.X_OK):
        try:
            return Path(tempfile.mkdtemp(prefix="fuseline-api-slots-", dir=MEMORY_FS))
        except OSError:
            pass
    return fallback


class ServingCache(FeatureCache):
    """A FeatureCache whose stores never write shards (see the module docstring)."""

    def __init__(self, root: str | Path, scratch: Path, memory_keys: int = DEFAULT_MEMORY_KEYS) -> None:
        super().__init__(root)
        self.scratch = scratch  # per-request slot arrays: the server's own temp directory
        self.memory_keys = memory_keys
        self._stores: dict[str, ServingStore] = {}
        self._lock = threading.Lock()

    def store(self, fingerprint: dict[str, Any], pipeline: dict[str, Any]) -> ShardStore:
        namespace = namespace_of(fingerprint, pipeline)
        with self._lock:
            if namespace not in self._stores:
                dim = int(fingerprint["dim"])
                self._stores[namespace] = ServingStore(self.root / namespace, dim, self.memory_keys)
            return self._stores[namespace]


class ServingStore(ShardStore):
    """One namespace: the project's shards (read-only) plus an in-memory table of new vectors."""

    def __init__(self, directory: Path, dim: int, memory_keys: int) -> None:
        super().__init__(directory, dim)
        self.memory_keys = memory_keys
        self._disk_stamp: int | None = None
        self._disk = ShardIndex()
        self._disk_shards: dict[str, Shard] = {}
        self._rows: dict[bytes, int] = {}
        self._vectors = np.zeros((0, dim), np.float32)
        self._ok = np.zeros(0, bool)

    def describe(self, info: dict) -> None:
        """Nothing: the server does not write into the project's cache."""

    def scan(self) -> ShardIndex:
        """The project's shards (rescanned when their directory changes) and the in-memory rows."""
        stamp = self._shard_dir_stamp()
        if stamp != self._disk_stamp:
            self._disk = super().scan() if stamp is not None else ShardIndex()
            self._disk_shards = {}
            self._disk_stamp = stamp
        memory = len(self._rows)
        return _LayeredIndex(
            shards=[*self._disk.shards, MEMORY],
            keys=self._disk.keys,
            shard=np.concatenate([self._disk.shard, np.full(memory, len(self._disk.shards), np.int32)]),
            row=np.concatenate([self._disk.row, np.arange(memory, dtype=np.int32)]),
            corrupt=list(self._disk.corrupt),
            memory_rows=self._rows,
        )

    def read(self, name: str) -> Shard:
        """The in-memory table, or a project shard verified once and then kept (up to a budget)."""
        if name == MEMORY:
            count = len(self._rows)
            return Shard(keys=[], vectors=self._vectors[:count], ok=self._ok[:count])
        shard = self._disk_shards.get(name)
        if shard is None:
            shard = super().read(name)
            kept = sum(s.vectors.nbytes for s in self._disk_shards.values())
            if kept + shard.vectors.nbytes <= DISK_SHARD_BYTES:
                self._disk_shards[name] = shard
        return shard

    def commit(self, keys: list[bytes], vectors: np.ndarray, ok: np.ndarray) -> str:
        """Keep the vectors in memory; a full table starts over (a cache only ever saves time)."""
        if len(self._rows) + len(keys) > self.memory_keys:
            self._rows = {}
        start = len(self._rows)
        self._grow(start + len(keys))
        for offset, key in enumerate(keys):
            self._rows[key] = start + offset
        self._vectors[start : start + len(keys)] = vectors
        self._ok[start : start + len(keys)] = ok
        return MEMORY

    def _grow(self, needed: int) -> None:
        if needed <= len(self._vectors):
            return
        size = max(needed, 2 * len(self._vectors), 64)
        vectors = np.zeros((size, self.dim), np.float32)
        ok = np.zeros(size, bool)
        vectors[: len(self._vectors)] = self._vectors
        ok[: len(self._ok)] = self._ok
        self._vectors, self._ok = vectors, ok

    def _shard_dir_stamp(self) -> int | None:
        """The shard directory's mtime: it changes whenever a shard is added or discarded."""
        try:
            return self.shard_dir.stat().st_mtime_ns
        except OSError:
            return None


class _LayeredIndex(ShardIndex):
    """A ShardIndex whose last shard is the in-memory table; a key found on disk wins."""

    def __init__(self, memory_rows: dict[bytes, int], **fields: Any) -> None:
        super().__init__(**fields)
        self.memory_rows = memory_rows

    def locate(self, wanted: list[bytes]) -> np.ndarray:
        found = super().locate(wanted)
        offset = len(self.keys)
        for position in np.flatnonzero(found < 0):
            row = self.memory_rows.get(wanted[position])
            if row is not None:
                found[position] = offset + row
        return found
