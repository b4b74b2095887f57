"""The warm stage host (flows/_stage_host.py): a stage it runs behaves as `python -m` would.

Each test runs real stages of the session's reproduced demo project, once through the host
and, where it matters, once on their own, and compares what a user (and DVC) sees: outputs,
exit status, messages. The host's log says which stages it forked, so a test also knows the
hand-over really happened rather than a silent fallback. The tests share one copy of the
project and one warm host, as the stages of one `fuseline repro` do: a host takes only
stages run in its own directory, and a stage here rewrites what it reads, identically.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from flows._stage_host import ENV_VAR, stage_host
from tests.e2e.conftest import copy_repo

Repo = tuple[Path, dict[str, str]]


@pytest.fixture(scope="module")
def project(repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Repo:
    root, env = repo
    return copy_repo(root, tmp_path_factory.mktemp("hosted") / "project"), env


@pytest.fixture(scope="module")
def hosted(project: Repo) -> Iterator[dict[str, str]]:
    """The environment that hands this module's stages to one warm host in the project."""
    root, env = project
    with stage_host(env, cwd=str(root)) as hosted_env:
        yield hosted_env


def stage(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def host_log(env: dict[str, str], since: int = 0) -> str:
    """The host's log from character `since` on (an earlier test's lines are not this test's)."""
    return (Path(env[ENV_VAR]).parent / "host.log").read_text()[since:]


def test_stages_run_in_the_host_with_the_outputs_they_write_on_their_own(
    project: Repo, hosted: dict[str, str]
) -> None:
    root, env = project
    aligned = root / "data" / "aligned" / "aligned.parquet"
    before = pd.read_parquet(aligned)
    aligned.unlink()
    start = len(host_log(hosted))
    result = stage(root, hosted, "flows.align")
    log = host_log(hosted, start)
    assert result.returncode == 0, result.stderr
    assert "flows.align" in log and "declined" not in log, log
    assert "aligned" in result.stdout + result.stderr  # the stage's own output reached our streams
    pd.testing.assert_frame_equal(pd.read_parquet(aligned), before)
    status = subprocess.run(["dvc", "status", "align"], cwd=root, env=env, capture_output=True, text=True)
    assert "changed outs" not in status.stdout, status.stdout


def test_a_failing_stage_exits_and_explains_as_it_does_alone(project: Repo, hosted: dict[str, str]) -> None:
    root, env = project
    alone = stage(root, env, "flows.train", "--params", "missing.yaml")
    start = len(host_log(hosted))
    hosted_run = stage(root, hosted, "flows.train", "--params", "missing.yaml")
    log = host_log(hosted, start)
    assert "flows.train --params missing.yaml" in log, log
    assert alone.returncode != 0
    assert hosted_run.returncode == alone.returncode
    assert "missing.yaml" in hosted_run.stderr

    def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
        return [line for line in result.stderr.splitlines() if line.startswith("fuseline:")]

    assert errors(alone) and errors(hosted_run) == errors(alone)


def test_other_prefect_settings_or_no_host_run_the_stage_itself(
    project: Repo, hosted: dict[str, str], tmp_path: Path
) -> None:
    """Prefect reads its settings on import: a stage with other ones must not run in the host's."""
    root, env = project
    start = len(host_log(hosted))
    declined = stage(root, dict(hosted, PREFECT_CLIENT_MAX_RETRIES="3"), "flows.align")
    log = host_log(hosted, start)
    assert declined.returncode == 0, declined.stderr
    assert "flows.align declined: its prefect differs" in log, log
    gone = stage(root, dict(env, **{ENV_VAR: str(tmp_path / "no-host.sock")}), "flows.align")
    assert gone.returncode == 0, gone.stderr


def test_fuseline_repro_is_dvc_repro_with_the_host(project: Repo) -> None:
    root, env = project
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "repro", "--single-item", "-f", "align"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Running stage 'align'" in result.stdout
    assert "fuseline repro: 1 stage(s) ran in the warm stage host" in result.stdout
    status = subprocess.run(["dvc", "status"], cwd=root, env=env, capture_output=True, text=True)
    assert "changed" not in status.stdout, status.stdout
