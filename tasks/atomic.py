"""Atomic writes: every output is either the old complete file or the new complete file.

A killed run must never leave a half-written Parquet file, bundle or metrics file that a
later stage (or DVC) would mistake for a finished one. Files are written to a hidden temp
beside the target and renamed over it; directories are built beside the target and swapped
with it in one `renameat2(RENAME_EXCHANGE)` on Linux, so there is no moment at which the
target is missing (elsewhere: two renames, and a crash between them is repaired by the next
write, which restores the old tree).

Temp names carry the writer's pid (`.<name>.<pid>.<random>.tmp`): the next write into the
same directory removes temps whose writer is dead, so a `kill -9` leaves nothing behind for
long, not even inside a directory that DVC hashes as one output.

A write that fails because the disk is full, a quota is hit, or the directory is not
writable raises OutputError naming the target, after removing its temp.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.errors import FuselineError

log = logging.getLogger(__name__)

# tempfile creates private files (0600) and directories (0700); what we rename into place
# should get the permissions any other new file would. Read once: os.umask can only be read
# by setting it, which is not safe once threads are running.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

_TEMP_NAME = re.compile(r"^\.(?P<target>.+?)\.(?:(?P<pid>\d+)\.)?(?P<random>[^.]+)\.(?P<kind>tmp|old)$")
_CANNOT_WRITE = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system or the process's file size limit",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}
# Writers that wrap the OS error in their own type (pyarrow, safetensors) keep its text.
_CANNOT_WRITE_TEXT = re.compile(
    r"No space left on device|Disk quota exceeded|File too large|Permission denied|Read-only file system"
)
_swept: set[Path] = set()  # directories this process has already swept for dead writers' temps


class OutputError(FuselineError):
    """An output cannot be written (disk full, quota, permissions); nothing partial was left."""


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename it into place only if the block succeeds."""
    target = Path(target)
    with _as_output_error(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        _sweep_dead_writers(target.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _as_output_error(target):
            tmp.chmod(0o666 & ~_UMASK)
            yield tmp
            _fsync_file(tmp)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp directory beside `target`; swap it in for `target` if the block succeeds."""
    target = Path(target)
    with _as_output_error(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        _restore_interrupted_swap(target)
        for stale in target.parent.glob(f".{_escape(target.name)}.*"):
            if stale.is_dir() and _TEMP_NAME.match(stale.name) and not _writer_alive(stale.name):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        with _as_output_error(target):
            tmp.chmod(0o777 & ~_UMASK)
            yield tmp
            for child in tmp.rglob("*"):
                if child.is_file():
                    _fsync_file(child)
            if not target.exists():
                os.replace(tmp, target)
            elif not _exchange(tmp, target):  # tmp now holds the old tree, or the fallback:
                old = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".old", dir=target.parent))
                old.rmdir()
                os.replace(target, old)
                os.replace(tmp, target)
                tmp = old
            _fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(table: pa.Table, target: str | os.PathLike[str]) -> None:
    """Write a Parquet file atomically."""
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)


def write_json(data: object, target: str | os.PathLike[str]) -> None:
    """Write indented, key-sorted JSON atomically (stable bytes keep DVC diffs readable)."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text(text: str, target: str | os.PathLike[str]) -> None:
    """Write a text file atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_bytes(data: bytes, target: str | os.PathLike[str]) -> None:
    """Write a binary file atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


# --- failures --------------------------------------------------------------------------------


def reserved_memmap(path: Path, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.memmap:
    """A new `.npy` array mapped for writing, its disk blocks reserved before any write.

    numpy makes the file sparse, and a write through the mapping into a block the disk cannot
    supply kills the process with SIGBUS rather than raising. Reserving the blocks first turns
    a full disk (or a file size limit) into an OSError here, which callers can handle.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    size = path.stat().st_size
    if size:
        descriptor = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(descriptor, 0, size)
        finally:
            os.close(descriptor)
    return array


@contextmanager
def _as_output_error(target: Path) -> Iterator[None]:
    """Re-raise 'cannot write here' failures as an OutputError naming the target."""
    try:
        yield
    except OutputError:
        raise
    except Exception as err:
        reason = _cannot_write_reason(err, target)
        if reason is None:
            raise
        raise OutputError(
            f"cannot write {target}: {reason}; nothing was written and the previous version, "
            f"if any, is unchanged ({err})"
        ) from err


def _cannot_write_reason(err: BaseException, target: Path) -> str | None:
    if isinstance(err, OSError) and err.filename is not None:
        # A failure on some other path (an input read inside the block) is not ours to rename.
        where, home = Path(os.fsdecode(err.filename)).resolve(), target.parent.resolve()
        if not (where.is_relative_to(home) or home.is_relative_to(where)):
            return None
    if isinstance(err, OSError) and err.errno in _CANNOT_WRITE:
        return _CANNOT_WRITE[err.errno]
    match = _CANNOT_WRITE_TEXT.search(str(err))
    return match.group(0).lower() if match else None


# --- temp names and crash leftovers ---------------------------------------------------------


def _prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def _escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _writer_alive(name: str) -> bool:
    """Whether the process that created this temp may still be writing it."""
    match = _TEMP_NAME.match(name)
    if match is None or match["pid"] is None:
        return False
    return process_alive(int(match["pid"]))


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (this one included): its temp files may still be in use."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and someone else's
        return True
    return True


def _sweep_dead_writers(directory: Path) -> None:
    """Remove temp files that killed writers left here; once per directory per process."""
    directory = directory.resolve()
    if directory in _swept:
        return
    _swept.add(directory)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match and match["pid"] and match["kind"] == "tmp" and entry.is_file(follow_symlinks=False):
            if not _writer_alive(entry.name):
                Path(entry.path).unlink(missing_ok=True)


def _restore_interrupted_swap(target: Path) -> None:
    """Put back the old tree if a crash came between the fallback swap's two renames."""
    if target.exists():
        return
    olds = [p for p in target.parent.glob(f".{_escape(target.name)}.*.old") if p.is_dir()]
    if olds:
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        os.replace(newest, target)
        log.warning("%s: restored the previous version left by an interrupted write", target)


# --- system calls ---------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
except (AttributeError, OSError):  # not glibc / not Linux
    _renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the OS or file system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable; some file systems cannot fsync a directory (fine)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
