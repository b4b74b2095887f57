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


def test_lr_sweep_of_two_values_shows_in_exp_show_and_metrics_diff(project: Repo) -> None:
    root, env = project
    for name, lr in (("lr-low", "0.0003"), ("lr-high", "0.01")):
        # epochs=5 in both keeps the sweep cheap; lr is the one parameter that differs
        command = ["dvc", "exp", "run", "-n", name, "-S", f"train.lr={lr}", "-S", "train.epochs=5"]
        ran = run_ok(command, root, env).stdout
        assert "Running stage 'train'" in ran and "Running stage 'extract" not in ran
    shown = json.loads(run_ok(["dvc", "exp", "show", "--json"], root, env).stdout)
    found = {
        exp["name"]: (
            exp["data"]["params"]["params.yaml"]["data"]["train"]["lr"],
            exp["data"]["metrics"]["reports/metrics.json"]["data"]["test"]["auc"],
        )
        for exp in _experiments(shown)
    }
    assert {name: lr for name, (lr, _) in found.items() if name.startswith("lr-")} == {
        "lr-low": 3e-4,
        "lr-high": 0.01,
    }
    diff = json.loads(run_ok(["dvc", "metrics", "diff", "lr-low", "lr-high", "--json"], root, env).stdout)
    auc = diff["reports/metrics.json"]["test.auc"]
    assert (auc["old"], auc["new"]) == (found["lr-low"][1], found["lr-high"][1])
