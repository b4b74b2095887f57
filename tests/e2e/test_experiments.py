"""Versioned data and models: a DVC remote set up the way `make demo` does it, push/pull into a
fresh clone, and a two-value parameter sweep with `dvc exp` and `dvc metrics diff`.

Each test works on a copy of the session's reproduced project (tests/e2e/conftest.py), with
the reproduced state committed, as a user commits after `dvc repro`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.e2e.conftest import GIT, copy_repo, run_ok

pytestmark = pytest.mark.slow

Repo = tuple[Path, dict[str, str]]


@pytest.fixture()
def project(repo: Repo, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root, env = repo
    copy = copy_repo(root, tmp_path / "project")
    with (copy / ".gitignore").open("a") as ignore:
        ignore.write("/.cache/\n")  # the feature cache is outside DVC and git
    run_ok([*GIT, "add", "-A"], copy, env)
    run_ok([*GIT, "commit", "-qm", "reproduced"], copy, env)
    return copy, env


def _make_remote(root: Path, env: dict[str, str], remote: Path) -> str:
    """`make dvc-remote` (what `make demo` runs) with the remote directory under the test's tmp."""
    return run_ok(
        ["make", "-s", "-f", str(REPO / "Makefile"), "dvc-remote", f"DVC_REMOTE={remote}"], root, env
    ).stdout


def test_make_adds_a_local_remote_only_when_none_is_configured(project: Repo, tmp_path: Path) -> None:
    root, env = project
    first = _make_remote(root, env, tmp_path / "remote")
    second = _make_remote(root, env, tmp_path / "elsewhere")
    assert "DVC remote 'local'" in first and second == ""
    listed = run_ok(["dvc", "remote", "list"], root, env).stdout.split()
    assert listed[:2] == ["local", str(tmp_path / "remote")]


def test_push_then_pull_restores_the_outputs_in_a_fresh_clone(project: Repo, tmp_path: Path) -> None:
    root, env = project
    remote = tmp_path / "remote"
    _make_remote(root, env, remote)
    run_ok(["dvc", "push"], root, env)
    clone = tmp_path / "clone"
    run_ok(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    assert not (clone / "models").exists()
    _make_remote(clone, env, remote)
    run_ok(["dvc", "pull"], clone, env)
    for output in ("models/model.safetensors", "models/bundle.json", "data/features/text.parquet"):
        assert (clone / output).read_bytes() == (root / output).read_bytes(), output
    status = run_ok(["dvc", "status", "--json"], clone, env).stdout
    assert json.loads(status) == {}


def _experiments(shown: Any) -> Iterator[dict]:
    """Every experiment record (a dict with a name and its params/metrics) in `dvc exp show --json`."""
    if isinstance(shown, dict):
        if shown.get("name") and isinstance(shown.get("data"), dict) and "params" in shown["data"]:
            yield shown
        for value in shown.values():
            yield from _experiments(value)
    elif isinstance(shown, list):
        for value in shown:
            yield from _experiments(value)


def test_an_lr_experiment_reruns_only_training_and_diffs_against_the_baseline(project: Repo) -> None:
    """A two-value sweep: the committed run (train.lr as params.yaml has it) and one experiment.

    Changing lr reruns `params` (which re-derives what DVC tracks), train and evaluate, nothing else.
    """
    root, env = project
    baseline_lr = yaml.safe_load((root / "params.yaml").read_text())["train"]["lr"]
    committed = json.loads((root / "reports" / "metrics.json").read_text())["test"]["auc"]
    ran = run_ok(["dvc", "exp", "run", "-n", "lr-low", "-S", "train.lr=0.0003"], root, env).stdout
    stages = {line.split("'")[1] for line in ran.splitlines() if line.startswith("Running stage")}
    assert stages == {"params", "train", "evaluate"}
    shown = json.loads(run_ok(["dvc", "exp", "show", "--json"], root, env).stdout)
    found = {
        exp["name"]: (
            exp["data"]["params"]["params.yaml"]["data"]["train"]["lr"],
            exp["data"]["metrics"]["reports/metrics.json"]["data"]["test"]["auc"],
        )
        for exp in _experiments(shown)
    }
    assert found["lr-low"][0] == 3e-4 and baseline_lr != 3e-4
    diff = json.loads(run_ok(["dvc", "metrics", "diff", "HEAD", "lr-low", "--json"], root, env).stdout)
    auc = diff["reports/metrics.json"]["test.auc"]
    assert (auc["old"], auc["new"]) == (committed, found["lr-low"][1])
