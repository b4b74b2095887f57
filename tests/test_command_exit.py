"""A command's process skips the teardown's collections (flows/_entry.py), and still exits as before.

Each command runs in a fresh interpreter that reports, from its last atexit handler, how
many objects the collections skip (`gc.get_freeze_count()`): none without the change.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import tiny_params

# Registered first, so it runs last: after every other atexit handler of the command.
REPORT_AT_EXIT = """
import atexit, gc, runpy, sys
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count()))
module, *sys.argv[1:] = sys.argv[1:]
if module == "fuseline":
    from flows.cli import main
    main()
else:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _run(cwd: Path, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", REPORT_AT_EXIT, module, *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _frozen(result: subprocess.CompletedProcess[str]) -> int:
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("frozen at exit:")]
    return int(line.split(":")[1])


def test_a_stage_that_succeeds_exits_zero_with_its_objects_out_of_the_collections(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(rows=60), sort_keys=False))
    result = _run(tmp_path, "flows.params")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "data" / "resolved" / "params.yaml").is_file()  # its output is complete
    assert _frozen(result) > 10_000  # torch, pandas and pydantic's objects at least


def test_a_command_that_fails_exits_two_with_its_line_and_the_same_exit(tmp_path: Path) -> None:
    result = _run(tmp_path, "fuseline", "check", "--params", "absent.yaml")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("fuseline: ")
    assert "absent.yaml" in result.stderr
    assert _frozen(result) > 10_000
