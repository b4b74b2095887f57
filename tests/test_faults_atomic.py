"""tasks/atomic.py under faults, in-process: what a crash leaves behind, and writes that fail.

The end-to-end versions (real stages killed with SIGKILL, read-only directories, a full
tmpfs) are in tests/test_faults.py; these pin down each mechanism on its own, in milliseconds.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tasks.atomic import OutputError, atomic_dir, write_bytes, write_json


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(child.stdout)


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Lower this process's soft RLIMIT_FSIZE for a moment; writes past it fail with EFBIG."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_temp_files_of_dead_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    dead = tmp_path / f".metrics.json.{dead_pid()}.abcd1234.tmp"
    dead.write_text('{"half": ')
    alive = tmp_path / f".roc.csv.{os.getppid()}.efgh5678.tmp"  # a live process's write in progress
    alive.write_text("fpr,tpr\n")
    foreign = tmp_path / ".notes.tmp"  # not one of ours: left alone
    foreign.write_text("x")
    write_json({"auc": 0.9}, tmp_path / "metrics.json")
    assert not dead.exists()
    assert alive.exists() and foreign.exists()


def test_a_swap_interrupted_between_renames_is_undone_by_the_next_write(tmp_path: Path) -> None:
    # The state the two-rename fallback leaves if killed between its renames: no target,
    # the previous tree in a hidden .old directory.
    old = tmp_path / f".models.{dead_pid()}.abcd1234.old"
    old.mkdir()
    (old / "bundle.json").write_text("previous")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "models") as tmp:
        (tmp / "bundle.json").write_text("half")
        raise RuntimeError("the new write fails too")
    assert (tmp_path / "models" / "bundle.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_a_file_too_big_for_its_limit_is_an_output_error_and_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    expected = "cannot write .*model.safetensors: file too large"
    with file_size_limit(4096), pytest.raises(OutputError, match=expected):
        write_bytes(b"\0" * 100_000, target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_a_directory_that_fails_midway_is_an_output_error_and_leaves_the_old_tree(tmp_path: Path) -> None:
    target = tmp_path / "models"
    target.mkdir()
    (target / "bundle.json").write_text("old")
    with file_size_limit(4096), pytest.raises(OutputError, match="cannot write .*models: file too large"):
        with atomic_dir(target) as tmp:
            (tmp / "bundle.json").write_text("new")
            (tmp / "model.safetensors").write_bytes(b"\0" * 100_000)
    assert [p.name for p in target.iterdir()] == ["bundle.json"]
    assert (target / "bundle.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_permission_denied_on_another_path_inside_the_block_is_not_called_an_output_error(
    tmp_path: Path,
) -> None:
    """Only failures on the output's own directory mean 'cannot write'; an input's pass through."""
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "inputs" / "items.csv"))
    with pytest.raises(PermissionError) as info, atomic_dir(tmp_path / "out" / "models"):
        raise denied
    assert info.value is denied
    assert not (tmp_path / "out" / "models").exists()
