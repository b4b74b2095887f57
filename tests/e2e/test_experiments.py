"""Versioned data and models: a DVC remote set up the way `make demo` does it, and push/pull into
a fresh clone. (`dvc exp run -S`, `dvc exp show`, `dvc metrics diff` and `dvc plots diff` are in
tests/e2e/test_minimal_params.py, on the params.yaml a new user writes.)

Each test works on a copy of the session's reproduced project (tests/e2e/conftest.py), with
the reproduced state committed, as a user commits after `dvc repro`.
"""

from __future__ import annotations

import json
from pathlib import Path

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
