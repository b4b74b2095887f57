"""Modalities whose cells are paths to files under a root (images, audio).

Align resolves each path under `data.<name>_root` (never outside it), hashes the file in
blocks, asks the modality whether it decodes, and records its SHA-256: the digest is the cache
key, so an edited file is new content and the same file twice is one. Batch prediction runs
the same pass over new rows.

No file is ever held whole: memory must follow what the encoder needs, not how big a file
is (a sparse 2.5 GB `.jpg` once took align to 3.3 GB when files were read into memory).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import queue
import threading
from abc import abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, Literal, TypeVar

import numpy as np
import pandas as pd
from tqdm import tqdm

from tasks.atomic import OutputError
from tasks.contents import Contents, contents_by_digest
from tasks.device import cores
from tasks.errors import DataError
from tasks.modalities.base import EmbeddedModality
from tasks.modalities.probe_memo import ProbeMemo, library_versions
from tasks.schema import DIGEST

if TYPE_CHECKING:
    from tasks.align_report import AlignReport
    from tasks.config import DataConfig

log = logging.getLogger(__name__)
_PROBE_BLOCK = 1024  # files handed to the probing threads at a time
Verdict = tuple[str, str | None]  # a file's (SHA-256 hex, why it cannot be used or None)
T = TypeVar("T")


class FileModality(EmbeddedModality):
    """Cells are paths under `data.<name>_root`; `data.on_bad_<name>` says what an unreadable file costs."""

    has_files = True
    noun = "file"  # "image", "audio file": in messages
    max_bytes: ClassVar[int | None] = None  # a bigger file is refused unread (None: any size)
    probe_libraries: ClassVar[tuple[str, ...]] = ()  # distributions whose version decides a verdict

    @property
    def root_key(self) -> str:
        return f"{self.name}_root"

    @property
    def on_bad_key(self) -> str:
        return f"on_bad_{self.name}"

    def data_keys(self) -> dict[str, tuple[Any, Any]]:
        """`<name>_root` (paths are relative to it, never outside it) and `on_bad_<name>`: a file
        that cannot be decoded is an error, or a missing cell counted in the align summary."""
        return {self.root_key: (str, "."), self.on_bad_key: (Literal["error", "missing"], "missing")}

    def root(self, data: DataConfig) -> Path:
        return Path(getattr(data, self.root_key))

    def on_bad(self, data: DataConfig) -> str:
        return str(getattr(data, self.on_bad_key))

    @abstractmethod
    def probe(self, path: Path) -> str | None:
        """Why the file cannot be used, or None when it decodes; reads only what decoding needs."""

    def probe_file(self, path: Path) -> Verdict:
        """(SHA-256 hex of the file, why it cannot be used or None).

        Hashed in blocks and probed from the file, so memory stays flat whatever its size; a
        file over `max_bytes` is refused before a byte is read (its digest is then "").
        """
        too_big = self.refuse_size(path.stat().st_size)
        if too_big is not None:
            return "", too_big
        return file_sha256(path), self.probe(path)

    def probe_fingerprint(self) -> str:
        """What a file's verdict depends on besides its bytes: another fingerprint probes afresh."""
        cls = type(self)
        versions = library_versions(*self.probe_libraries)
        return json.dumps([cls.__module__, cls.__qualname__, self.input_version, self.max_bytes, versions])

    def refuse_size(self, size: int) -> str | None:
        """Why a file of `size` bytes is refused unread, or None."""
        if self.max_bytes is not None and size > self.max_bytes:
            return f"{size:,} bytes is more than the {self.max_bytes:,} accepted"
        return None

    def inspect_cells(
        self,
        table: pd.DataFrame,
        ids: pd.Series,
        data: DataConfig,
        root: Path | None,
        report: AlignReport,
        memo_dir: Path | None = None,
    ) -> None:
        """`memo_dir`: where the digests of files seen before are kept (align's row cache), or None."""
        root = self.root(data) if root is None else root
        memo = ProbeMemo(memo_dir, root, self.probe_fingerprint()) if memo_dir is not None else None
        for column in self.columns(data):
            resolved = resolve_paths(table[column], root, column, report)
            table[column], table[DIGEST + column] = self._inspect(
                resolved, ids, root, column, self.on_bad(data), report, memo
            )
        if memo is not None:
            try:
                memo.save()
            except (OSError, OutputError) as err:  # only a later run's speed depends on it
                log.warning("could not save the probe memo %s: %s", memo.path, err)

    def contents(self, table: pd.DataFrame, columns: list[str], root: Path | None, source: str) -> Contents:
        assert root is not None
        return contents_by_digest(table, columns, root, source, prefix=self.name)

    def _inspect(
        self,
        paths: pd.Series,
        ids: pd.Series,
        root: Path,
        column: str,
        on_bad: str,
        report: AlignReport,
        memo: ProbeMemo | None = None,
    ) -> tuple[pd.Series, pd.Series]:
        """(paths, SHA-256 digests): each distinct file is read once, hashed and test-decoded.

        A file that does not decode is a DataError under `on_bad == "error"`; otherwise its
        cell becomes absent, counted and logged, so later stages see a row without it.
        """
        verdicts = self._probe_distinct(root, paths.dropna().unique().tolist(), column, memo)
        kept: list[str | None] = []
        digests: list[str | None] = []
        bad: list[tuple[str, str, str]] = []  # (row id, path, reason)
        for row_id, value in zip(ids, paths, strict=True):
            if pd.isna(value):
                kept.append(None)
                digests.append(None)
                continue
            digest, reason = verdicts[value]
            if reason is None:
                kept.append(str(value))
                digests.append(digest)
            else:
                bad.append((str(row_id), str(value), reason))
                kept.append(None)
                digests.append(None)
        report.files_undecodable[column] = len(bad)
        if bad:
            listed = "; ".join(f"{path}: {reason}" for _, path, reason in bad[:3])
            message = f"{len(bad)} {self.noun}s cannot be decoded ({listed})"
            if on_bad == "error":
                raise DataError(message, file=str(root), column=column, rows=[row for row, _, _ in bad])
            log.warning("%s: %s; treated as missing (data.%s: missing)", column, message, self.on_bad_key)
        index = paths.index
        return pd.Series(kept, index=index, dtype="string"), pd.Series(digests, index=index, dtype="string")

    def _probe_distinct(
        self, root: Path, values: list[str], column: str, memo: ProbeMemo | None = None
    ) -> dict[str, Verdict]:
        """(SHA-256 hex, why unusable or None) per distinct path, probed on a thread per core.

        Reading, hashing and decoding release the GIL: on flipkart's photos two threads probe
        1.6x as fast as one (tiny files are bound by Python's own work, and gain nothing). Files
        are handed out a block at a time, so a million paths never become a million futures.
        With a memo, a file unchanged since an earlier run is not read at all.
        """
        known, stats = self._recalled(root, values, memo)
        verdicts = known | self._probed(root, [v for v in values if v not in known], column)
        if memo is not None:
            for value, stat in stats.items():
                digest, reason = verdicts[value]
                if reason is None:
                    memo.remember(value, stat, digest)
        return verdicts

    @staticmethod
    def _recalled(
        root: Path, values: list[str], memo: ProbeMemo | None
    ) -> tuple[dict[str, Verdict], dict[str, os.stat_result]]:
        """(verdicts the memo holds, the stat of each other file taken before it is read)."""
        known: dict[str, Verdict] = {}
        stats: dict[str, os.stat_result] = {}
        if memo is None:
            return known, stats
        for value in values:
            try:
                stat = os.stat(root / value)
            except OSError:
                continue  # probing it says why
            digest = memo.digest(value, stat)
            if digest is None:
                stats[value] = stat
            else:
                known[value] = (digest, None)
        return known, stats

    def _probed(self, root: Path, values: list[str], column: str) -> dict[str, Verdict]:
        """Each file read, hashed and test-decoded."""

        def probe(value: str) -> Verdict:
            try:
                return self.probe_file(root / value)
            except OSError as err:  # removed or unreadable since it was resolved
                return "", f"cannot be read ({err.strerror})"

        if len(values) < 2:  # a served request's one file: a thread pool and a progress bar cost more
            return {value: probe(value) for value in values}
        verdicts: dict[str, Verdict] = {}
        progress = tqdm(total=len(values), desc=f"{column}: hashing {self.noun}s", unit="file", disable=None)
        with ThreadPoolExecutor(cores(), thread_name_prefix="probe") as pool, progress:
            for start in range(0, len(values), _PROBE_BLOCK):
                block = values[start : start + _PROBE_BLOCK]
                verdicts.update(zip(block, pool.map(probe, block), strict=True))
                progress.update(len(block))
        return verdicts


def resolve_paths(paths: pd.Series, root: Path, column: str, report: AlignReport) -> pd.Series:
    """Paths relative to the root for usable files; null for missing or escaping ones.

    A path that leads outside the root (`..`, absolute, or a symlink out) is never opened:
    params must not become a way to read arbitrary files. Cells that cannot be a path at all
    (a NUL byte, a base64 blob longer than any file name, a symlink loop) are counted too,
    never raised: one odd cell must not stop a run over a million rows.
    """
    root_resolved = root.resolve()
    resolved: list[str | None] = []
    counts = {"refused": 0, "missing": 0}
    for value in paths:
        relative, outcome = resolve_under(value, root, root_resolved)
        resolved.append(relative)
        if outcome in counts:
            counts[outcome] += 1
    report.files_missing[column] = counts["missing"]
    report.paths_refused[column] = counts["refused"]
    if counts["refused"]:
        log.warning("%s: %d paths lead outside %s or are not paths", column, counts["refused"], root)
    if counts["missing"]:
        log.warning("%s: %d files do not exist under %s", column, counts["missing"], root)
    return pd.Series(resolved, index=paths.index, dtype="string")


def resolve_under(value: object, root: Path, root_resolved: Path) -> tuple[str | None, str]:
    """(path relative to root, "ok") for a usable file; else (None, "empty" | "refused" | "missing")."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None, "empty"
    text = str(value).strip()
    if not text:
        return None, "empty"
    if "\x00" in text:
        return None, "refused"
    candidate = Path(text)
    try:
        full = (root / candidate).resolve()
        if candidate.is_absolute() or not full.is_relative_to(root_resolved):
            return None, "refused"
        if not full.is_file():
            return None, "missing"
    except RuntimeError:  # a symlink loop (Python < 3.13 raises this from resolve)
        return None, "missing"
    except OSError as err:  # ELOOP, ENAMETOOLONG, EACCES, ...
        return None, "refused" if err.errno == errno.ENAMETOOLONG else "missing"
    except ValueError:
        return None, "refused"
    return full.relative_to(root_resolved).as_posix(), "ok"


def file_sha256(path: Path) -> str:
    """SHA-256 hex of a file, read in blocks: memory stays flat for a file of any size."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_verified(path: Path, digest: bytes, read: Callable[[BinaryIO], T]) -> tuple[bool, T | None]:
    """(True, read(file)) if the file still hashes to `digest`, else (False, None): changed or gone.

    Hashed in blocks through the handle `read` then decodes from, so a huge file is never
    held whole and the bytes decoded are the bytes hashed: a file replaced by another keeps
    this handle on the old one, and one written over in place in the meantime changes its
    size or modification time, which is compared after `read`. What `read` raises propagates.
    """
    try:
        handle = path.open("rb")
    except OSError:
        return False, None
    with handle:
        try:
            before = _identity(handle)
            if hashlib.file_digest(handle, "sha256").digest() != digest:
                return False, None
            handle.seek(0)
        except OSError:
            return False, None
        result = read(handle)
        return (True, result) if _identity(handle) == before else (False, None)


def _identity(handle: BinaryIO) -> tuple[int, int]:
    found = os.fstat(handle.fileno())
    return found.st_size, found.st_mtime_ns


def raise_changed(contents: Contents, slots: np.ndarray, noun: str) -> None:
    """Files whose bytes are not the ones align hashed: their key would be a lie."""
    column = contents.first_cell[int(slots[0])][1]
    raise DataError(
        f"{noun} is missing or changed since align; rerun align",
        file=str(contents.sources[int(slots[0])]),
        rows=[contents.first_cell[int(s)][0] for s in slots],
        column=column,
    )


_END = object()


class Prefetched:
    """Prepares the next inputs (audio clips, tokenised texts) on a thread while the encoder
    runs on this one.

    Without worker processes (a 2-core CPU, where their start-up and IPC cost more than
    they save) this work would sit between forwards. File reads, sha256, the decoders and
    the tokenizer release the GIL, so a thread hides most of it in the forward's gaps.
    Images decode between forwards instead (tasks/modalities/image.py says why).
    """

    def __init__(self, source: Iterator, depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(source,), name="decode-ahead", daemon=True)
        self._thread.start()

    def _fill(self, source: Iterator) -> None:
        try:
            for item in source:
                if not self._put((item, None)):
                    return
            self._put((_END, None))
        except BaseException as err:  # handed to the consumer, raised there
            self._put((None, err))

    def _put(self, entry: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetched:
        return self

    def __next__(self) -> Any:
        item, err = self._queue.get()
        if err is not None:
            raise err
        if item is _END:
            self._queue.put((_END, None))  # a later next() ends too, it does not hang
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop decoding ahead (the consumer has moved on or failed)."""
        self._stop.set()
