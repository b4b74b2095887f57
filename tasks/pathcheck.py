"""Paths a user names for a run (model, input, output), checked before any work starts.

Batch prediction reads a bundle and an input file and writes one Parquet file. Without
these checks `--output new.csv` silently replaced the input with Parquet, `--output
models/bundle.json` destroyed the bundle's metadata, and an existing directory, a symlink
loop or a name holding a NUL byte ended in a traceback. Every refusal here is one line that
names the path and the reason, raised before the model is loaded.

Paths are compared after resolving symlinks and `..`, and by (device, inode) when both
exist, so a second name for a file (symlink, hard link) is the same file.

Every file a user names as input (rows to predict, source tables, params.yaml) is read only
if it is a regular file: a FIFO blocked a second read forever (its writer had gone) and
/dev/zero never ends, so both are refused by their type before a byte is read
(`open_regular`, `check_input_path`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from tasks.errors import BundleError, DataError, FuselineError

PathLike = str | os.PathLike[str]
PARQUET_SUFFIXES = (".parquet", ".pq")  # prediction always writes Parquet
_WHY = {
    errno.ELOOP: "it is a symlink loop (or goes through one)",
    errno.ENAMETOOLONG: "the name is too long for the file system",
    errno.ENOTDIR: "a part of it that should be a directory is a file",
    errno.EACCES: "permission denied",
}


def show(path: PathLike) -> str:
    """A path as one printable line: a crafted name may hold newlines or a NUL byte."""
    text = os.fspath(path)
    return text if text.isprintable() else repr(text)


def probe(path: PathLike, fail: type[FuselineError], what: str) -> os.stat_result | None:
    """os.stat of `path` (following symlinks), None when nothing is there.

    A name the OS cannot even look up (NUL byte, symlink loop, too long) raises `fail`,
    because pathlib turns those into ValueError / RuntimeError / OSError tracebacks later.
    """
    text = os.fspath(path)
    if not text:
        raise _error(fail, path, f"the {what} path is empty")
    if "\0" in text:
        raise _error(fail, path, f"the {what} path contains a NUL byte")
    try:
        return os.stat(text)
    except FileNotFoundError:
        return None
    except OSError as err:
        reason = _WHY.get(err.errno, f"it cannot be examined ({err.strerror})")
        raise _error(fail, path, f"unusable {what} path: {reason}") from None


def check_model_path(path: PathLike) -> Path:
    """An existing directory (a bundle or a registry); anything else is a one-line BundleError."""
    found = probe(path, BundleError, "model")
    if found is None:
        raise _error(BundleError, path, "no model bundle or registry here (the path does not exist)")
    if not stat.S_ISDIR(found.st_mode):
        raise _error(BundleError, path, "is a file; --model names a bundle directory (models/) or a registry")
    return Path(path)


def check_input_path(path: PathLike) -> Path:
    """An existing regular file to read rows from."""
    found = probe(path, DataError, "input")
    if found is None:
        raise _error(DataError, path, "input file not found")
    if stat.S_ISDIR(found.st_mode):
        raise _error(DataError, path, "the input is a directory, not a file")
    problem = special_file_problem(found.st_mode, "input")
    if problem is not None:
        raise _error(DataError, path, problem)
    return Path(path)


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file_problem(mode: int, noun: str) -> str | None:
    """Why a file of this mode cannot be an input, or None for a regular file (or a directory).

    A pipe yields its bytes once, and only while a writer is there, so any second read (a
    retry, a header check, the next command) blocks forever; a device may never end.
    """
    for is_kind, kind in _SPECIAL_KINDS:
        if is_kind(mode):
            return (
                f"the {noun} path is {kind}, not a regular file; fuseline reads inputs only from "
                "regular files (copy the data into one)"
            )
    return None


def open_regular(path: PathLike, fail: type[FuselineError], noun: str) -> BinaryIO:
    """`path` opened once for binary reading, if it is a regular file; else a one-line `fail`.

    The type is checked before opening (so a socket or a device is never opened) and again on
    the open descriptor, which is opened non-blocking: a FIFO put in the file's place in
    between is refused instead of waiting for a writer. Callers rewind the handle to read
    again (a retry, a header check) rather than open the path twice.
    """
    found = probe(path, fail, noun)
    if found is None:
        raise _error(fail, path, f"{noun} file not found")
    _refuse_non_regular(found, path, fail, noun)
    try:
        descriptor = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _error(fail, path, f"{noun} file not found") from None
    except PermissionError:
        raise _error(fail, path, f"permission denied reading the {noun} file") from None
    except OSError as err:
        raise _error(fail, path, f"cannot open the {noun} file ({err.strerror})") from None
    try:
        _refuse_non_regular(os.fstat(descriptor), path, fail, noun)
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return os.fdopen(descriptor, "rb")


def _refuse_non_regular(found: os.stat_result, path: PathLike, fail: type[FuselineError], noun: str) -> None:
    if stat.S_ISDIR(found.st_mode):
        raise _error(fail, path, f"the {noun} path is a directory, not a file")
    problem = special_file_problem(found.st_mode, noun)
    if problem is not None:
        raise _error(fail, path, problem)


def check_output_path(
    output: PathLike, inputs: Iterable[PathLike] = (), protected_dirs: Iterable[PathLike] = ()
) -> Path:
    """Refuse an output that is a directory, one of `inputs`, inside a `protected_dirs`, or not Parquet.

    `inputs` are files the run reads (the rows, params.yaml); `protected_dirs` are trees it
    reads (the model bundle or registry, the feature cache). The write itself is atomic
    (tasks/atomic.py), so an accepted output is either the old file or the new one.
    """
    found = probe(output, DataError, "output")
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise _error(DataError, output, "the output is an existing directory; name a .parquet file")
    real = Path(os.path.realpath(output))
    for source in inputs:
        if _same_file(real, found, source):
            raise _error(
                DataError, output, f"the output would overwrite {show(source)}, which this run reads"
            )
    for tree in protected_dirs:
        if _inside(real, tree):
            raise _error(
                DataError,
                output,
                f"the output is inside {show(tree)}, which this run reads (the model bundle, registry "
                "or feature cache); write predictions elsewhere",
            )
    suffix = Path(output).suffix
    if suffix.lower() not in PARQUET_SUFFIXES:
        raise _error(
            DataError,
            output,
            "predictions are written as Parquet, so the output must end in .parquet or .pq"
            + (f", not {suffix!r}" if suffix else ""),
        )
    return Path(output)


def _same_file(real: Path, found: os.stat_result | None, other: PathLike) -> bool:
    """Whether `other` is the output under another name (spelling, symlink or hard link)."""
    try:
        if Path(os.path.realpath(other)) == real:
            return True
        theirs = os.stat(other) if found is not None else None
    except (OSError, ValueError):  # an unusable name cannot be the file we are about to write
        return False
    return theirs is not None and (theirs.st_dev, theirs.st_ino) == (found.st_dev, found.st_ino)


def _inside(real: Path, tree: PathLike) -> bool:
    try:
        return real.is_relative_to(os.path.realpath(tree))
    except ValueError:  # NUL byte: not a directory anything can be inside
        return False


def _error(fail: type[FuselineError], path: PathLike, message: str) -> FuselineError:
    if issubclass(fail, DataError):
        return fail(message, file=show(path))
    return fail(f"{show(path)}: {message}")
