"""`dvc repro` in a fresh git + DVC repository, the way a user runs fuseline."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


# `repo` (one reproduced project per session) lives in tests/e2e/conftest.py.


def test_repro_writes_metrics_for_fused_and_baselines(repo: tuple[Path, dict[str, str]]) -> None:
    root, _ = repo
    metrics = json.loads((root / "reports" / "evaluation.json").read_text())
    assert metrics["test"]["auc"] > 0.5
    expected = {"tabular", "text", "image", "audio", "sklearn", "majority"}
    assert set(metrics["baselines"]) - {"fused_head"} == expected


def test_second_repro_is_a_fast_no_op(repo: tuple[Path, dict[str, str]]) -> None:
    root, env = repo
    started = time.perf_counter()
    result = _run(["dvc", "repro"], root, env)
    elapsed = time.perf_counter() - started
    assert "Running stage" not in result.stdout
    assert elapsed < 15, f"no-op repro took {elapsed:.1f} s"
