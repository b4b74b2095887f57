"""Modalities whose cells are paths to files under a root (images, audio).

Align resolves each path under `data.<name>_root` (never outside it), reads the file once,
asks the modality whether it decodes, and records its SHA-256: the digest is the cache key,
so an edited file is new content and the same file twice is one. Batch prediction runs the
same pass over new rows.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import queue
import threading
from abc import abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from tasks.device import cores
from tasks.errors import DataError
from tasks.features.cache.contents import Contents, contents_by_digest
from tasks.modalities.base import EmbeddedModality
from tasks.schema import DIGEST

if TYPE_CHECKING:
    from tasks.config import DataConfig
    from tasks.data.align import AlignReport

log = logging.getLogger(__name__)
_PROBE_BLOCK = 1024  # files handed to the probing threads at a time
Verdict = tuple[str, str | None]  # a file's (SHA-256 hex, why it cannot be used or None)


class FileModality(EmbeddedModality):
    has_files = True
    noun = "file"  # "image", "audio file": in messages

    def root(self, data: DataConfig) -> Path:
        return Path(getattr(data, f"{self.name}_root"))

    def on_bad(self, data: DataConfig) -> str:
        return str(getattr(data, f"on_bad_{self.name}"))

    @abstractmethod
    def probe(self, data: bytes) -> str | None:
        """Why these bytes cannot be used, or None when they decode."""

    def probe_file(self, path: Path) -> tuple[str, str | None]:
        """(SHA-256 hex of the file, why it cannot be used or None).

        Reads the file once into memory; a modality whose files can be huge (hours of audio)
        overrides this to hash in blocks and decode only what it needs.
        """
        content = path.read_bytes()
        return hashlib.sha256(content).hexdigest(), self.probe(content)

    def inspect_cells(
        self, table: pd.DataFrame, ids: pd.Series, data: DataConfig, root: Path | None, report: AlignReport
    ) -> None:
        root = self.root(data) if root is None else root
        for column in self.columns(data):
            resolved = resolve_paths(table[column], root, column, report)
            table[column], table[DIGEST + column] = self._inspect(
                resolved, ids, root, column, self.on_bad(data), report
            )

    def contents(self, table: pd.DataFrame, columns: list[str], root: Path | None, source: str) -> Contents:
        assert root is not None
        return contents_by_digest(table, columns, root, source, prefix=self.name)

    def _inspect(
        self, paths: pd.Series, ids: pd.Series, root: Path, column: str, on_bad: str, report: AlignReport
    ) -> tuple[pd.Series, pd.Series]:
        """(paths, SHA-256 digests): each distinct file is read once, hashed and test-decoded.

        A file that does not decode is a DataError under `on_bad == "error"`; otherwise its
        cell becomes absent, counted and logged, so later stages see a row without it.
        """
        verdicts = self._probe_distinct(root, paths.dropna().unique().tolist(), column)
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
            log.warning("%s: %s; treated as missing (data.on_bad_%s: missing)", column, message, self.name)
        index = paths.index
        return pd.Series(kept, index=index, dtype="string"), pd.Series(digests, index=index, dtype="string")

    def _probe_distinct(self, root: Path, values: list[str], column: str) -> dict[str, Verdict]:
        """(SHA-256 hex, why unusable or None) per distinct path, probed on a thread per core.

        Reading, hashing and decoding release the GIL: on flipkart's photos two threads probe
        1.6x as fast as one (tiny files are bound by Python's own work, and gain nothing). Files
        are handed out a block at a time, so a million paths never become a million futures.
        """

        def probe(value: str) -> Verdict:
            try:
                return self.probe_file(root / value)
            except OSError as err:  # removed or unreadable since it was resolved
                return "", f"cannot be read ({err.strerror})"

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


def verified_bytes(path: Path, digest: bytes) -> bytes | None:
    """The file's bytes if they are still the ones align hashed, else None (changed or gone)."""
    try:
        content = path.read_bytes()
    except OSError:
        return None
    return content if hashlib.sha256(content).digest() == digest else None


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
