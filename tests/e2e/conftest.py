"""One reproduced git + DVC project per test session, shared by every end-to-end module.

Reproducing the tiny demo is the slowest thing the suite does, so it runs once, as `make demo`
runs it (`fuseline repro`: DVC's repro with its stages forked from one warm process, 47 s
against 110 s when each stage imports torch and Prefect itself; tests/e2e/test_stage_host.py
holds the two ways to the same outputs). Tests that change the project (experiments,
retraining, push/pull) work on a copy (`copy_repo`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tasks.paths import copy_project_code
from tests.conftest import REPO, tiny_params

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]


def run_ok(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output when it exits non-zero."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def project_env(prefect_api: str) -> dict[str, str]:
    """This interpreter's bin first on PATH (dvc.yaml runs `python -m flows...`), the test server's API."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    return env


def raw_demo_rows(root: Path, split: str | None = None) -> pd.DataFrame:
    """The demo's raw CSV rows (strings, as a user's file holds them), optionally one split's."""
    raw = pd.read_csv(root / "data" / "demo" / "items.csv", dtype=str, keep_default_na=False)
    if split is None:
        return raw
    aligned = pd.read_parquet(root / "data" / "aligned" / "aligned.parquet", columns=["row_id", "split"])
    return raw[raw["item_id"].isin(set(aligned.loc[aligned["split"] == split, "row_id"]))]


def copy_repo(source: Path, target: Path) -> Path:
    """A full copy (git history, DVC cache, feature cache, outputs) that a test may change freely."""
    shutil.copytree(source, target, symlinks=True)
    return target


@pytest.fixture(scope="session")
def repo(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A git + DVC repo holding the project code and a 200-row demo params.yaml, reproduced once."""
    root = tmp_path_factory.mktemp("dvc-repo")
    copy_project_code(REPO, root)
    params = tiny_params(
        rows=200, encoders={"image": {"model": "efficientnet_lite0", "image_size": 128, "batch_size": 32}}
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env(prefect_api)
    run_ok(["git", "init", "-q"], root, env)
    run_ok(["dvc", "init", "-q"], root, env)
    run_ok([*GIT, "add", "-A"], root, env)
    run_ok([*GIT, "commit", "-qm", "init"], root, env)
    run_ok([sys.executable, "-m", "flows.cli", "repro"], root, env)
    return root, env
