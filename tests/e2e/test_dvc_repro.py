"""`dvc repro` in a fresh git + DVC repository, the way a user runs fuseline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tiny_params

pytestmark = pytest.mark.slow

PROJECT_FILES = ("dvc.yaml", "flows", "tasks", "modelzoo")


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def repo(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A git + DVC repo holding the project code and a 200-row demo params.yaml, reproduced once."""
    root = tmp_path_factory.mktemp("dvc-repo")
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, root / name)
    params = tiny_params(rows=200, encoders={"image": {"model": "efficientnet_lite0", "image_size": 128, "batch_size": 32}})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    _run(["git", "init", "-q"], root, env)
    _run(["dvc", "init", "-q"], root, env)
    _run([*git, "add", "-A"], root, env)
    _run([*git, "commit", "-qm", "init"], root, env)
    _run(["dvc", "repro"], root, env)
    return root, env


def test_repro_writes_metrics_for_fused_and_baselines(repo: tuple[Path, dict[str, str]]) -> None:
    root, _ = repo
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert metrics["test"]["auc"] > 0.5
    assert set(metrics["baselines"]) == {"tabular", "text", "image"}


def test_second_repro_is_a_fast_no_op(repo: tuple[Path, dict[str, str]]) -> None:
    root, env = repo
    started = time.perf_counter()
    result = _run(["dvc", "repro"], root, env)
    elapsed = time.perf_counter() - started
    assert "Running stage" not in result.stdout
    assert elapsed < 15, f"no-op repro took {elapsed:.1f} s"


def test_changing_lr_reruns_only_train_and_evaluate(repo: tuple[Path, dict[str, str]]) -> None:
    root, env = repo
    result = _run(["dvc", "exp", "run", "-S", "train.lr=0.003"], root, env)
    ran = {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"train", "evaluate"}
    shown = _run(["dvc", "exp", "show", "--no-pager", "--json"], root, env)
    assert "0.003" in shown.stdout
