"""Scheduled retraining: the deployment, prefect.yaml, warm runs, promotion, and `fuseline serve`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.e2e.conftest import copy_repo

Repo = tuple[Path, dict[str, str]]


def _write_params(path: Path, **schedule: object) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["schedule"] = {**params["schedule"], **schedule}
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_deployment_takes_cron_timezone_and_params_file_from_params(tmp_path: Path) -> None:
    from flows.deploy import deployment

    params = _write_params(tmp_path / "params.yaml", cron="15 4 * * 1-5", timezone="Europe/Berlin")
    built = deployment(str(params))
    (schedule,) = built.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("15 4 * * 1-5", "Europe/Berlin")
    assert built.parameters == {"params_path": str(params)}


def test_bad_cron_fails_at_load_naming_the_key(tmp_path: Path) -> None:
    from tasks.config import load_params
    from tasks.errors import ConfigError

    with pytest.raises(ConfigError, match="schedule.cron: expected a 5-field cron expression"):
        load_params(_write_params(tmp_path / "params.yaml", cron="every day"))


def test_prefect_yaml_schedules_match_params_yaml() -> None:
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, entrypoint, section in (
        ("scheduled-retrain", "flows/deploy.py:retrain", "schedule"),
        ("scheduled-monitor", "flows/monitor.py:monitor", "monitor"),
    ):
        assert deployments[name]["entrypoint"] == entrypoint
        cron, timezone = params[section]["cron"], params[section]["timezone"]
        assert deployments[name]["schedules"] == [{"cron": cron, "timezone": timezone}], name


def test_monitor_deployment_takes_its_cron_from_params(tmp_path: Path) -> None:
    from flows.monitor import deployment

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["monitor"] = {**params["monitor"], "cron": "30 1 * * *", "timezone": "Asia/Tokyo"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    built = deployment(str(tmp_path / "params.yaml"))
    (schedule,) = built.schedules
    assert (built.name, schedule.schedule.cron, schedule.schedule.timezone) == (
        "scheduled-monitor", "30 1 * * *", "Asia/Tokyo",
    )  # fmt: skip


@pytest.mark.slow
def test_prefect_deploy_registers_the_work_pool_deployment(prefect_api: str, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    async def create_pool() -> None:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name="fuseline", type="process"), overwrite=True)

    async def read() -> object:
        async with get_client() as client:
            return await client.read_deployment_by_name("fuseline-retrain/scheduled-retrain")

    asyncio.run(create_pool())
    env = dict(os.environ, PREFECT_API_URL=prefect_api, FUSELINE_PROJECT_DIR=str(tmp_path))
    prefect = str(Path(sys.executable).parent / "prefect")
    command = [prefect, "--no-prompt", "deploy", "--all"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    # Prefect 3.8.8 registers the deployment, then its own online-worker check gets a 422
    # from the server and exits non-zero; what matters is that the deployment exists.
    assert "successfully created" in result.stdout, result.stdout + result.stderr
    deployment = asyncio.run(read())
    assert deployment.work_pool_name == "fuseline"
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(tmp_path)}}
    ]


@pytest.fixture()
def project(repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the reproduced project, as the working directory."""
    root = copy_repo(repo[0], tmp_path / "project")
    monkeypatch.chdir(root)
    return root


@pytest.mark.slow
def test_warm_scheduled_run_reruns_nothing_and_promotes_the_first_model(project: Path) -> None:
    from flows.deploy import retrain

    started = time.perf_counter()
    result = retrain("params.yaml")
    seconds = time.perf_counter() - started
    print(f"warm scheduled run: {seconds:.1f} s (flow-reported {result['seconds']} s)")
    assert result["stages_rerun"] == []
    assert (result["outcome"], result["version"]) == ("promoted", "v0001")
    assert json.loads((project / "registry" / "current.json").read_text())["version"] == "v0001"


@pytest.mark.slow
def test_rerun_without_changes_promotes_nothing_new(project: Path) -> None:
    from flows.deploy import retrain

    retrain("params.yaml")
    result = retrain("params.yaml")
    assert result["outcome"] == "unchanged"
    assert sorted(p.name for p in (project / "registry").glob("v*")) == ["v0001"]


@pytest.mark.slow
def test_worse_model_is_kept_out_and_the_artifact_says_so(project: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.deploy import retrain

    registry = project / "registry"
    (registry / "v0001" / "model").mkdir(parents=True)
    (registry / "current.json").write_text(json.dumps({"version": "v0001", "metric": "auc", "value": 0.9999}))
    result = retrain("params.yaml")

    async def latest_markdown() -> str:
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fuseline-promotion"])),
                flow_run_filter=FlowRunFilter(),
                task_run_filter=TaskRunFilter(),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
            return str(artifacts[0].data)

    assert result["outcome"] == "kept"
    assert json.loads((registry / "current.json").read_text())["version"] == "v0001"
    assert "Kept the current model **v0001**" in asyncio.run(latest_markdown())


@pytest.mark.slow
def test_served_deployment_runs_when_triggered(prefect_api: str, repo: Repo, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    root = copy_repo(repo[0], tmp_path / "served")
    # The runner looks for scheduled runs every 10 s by default; a second keeps the wait short.
    env = dict(repo[1], PREFECT_API_URL=prefect_api, PREFECT_RUNNER_POLL_FREQUENCY="1")
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "flows.deploy", "--name", "served-test"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    async def wait_for_deployment() -> None:
        async with get_client() as client:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    await client.read_deployment_by_name("fuseline-retrain/served-test")
                    return
                except Exception:  # noqa: BLE001 - not registered yet
                    assert serve.poll() is None, (tmp_path / "serve.log").read_text()
                    await asyncio.sleep(1)
            raise AssertionError("the served deployment never appeared")

    try:
        asyncio.run(wait_for_deployment())
        run = run_deployment("fuseline-retrain/served-test", timeout=300, poll_interval=2)
        assert run.state is not None and run.state.is_completed(), run.state
        assert json.loads((root / "registry" / "current.json").read_text())["version"] == "v0001"
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
        log.close()


@pytest.mark.slow
def test_a_retrained_model_meets_the_promoted_one_on_the_same_rows(project: Path) -> None:
    """Issue 14 §1: the decision re-scores the promoted bundle on the new run's own test rows."""
    from flows.deploy import retrain

    assert retrain("params.yaml")["outcome"] == "promoted"
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["seed"] = 7  # another model on the same data and the same (stable) split
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = retrain("params.yaml")
    same = result["same_rows"]
    metrics = json.loads((project / "reports" / "evaluation.json").read_text())
    assert same["rows"] == metrics["rows"]["test"]
    # re-scored through batch prediction, the new model gives evaluate's own number
    assert same["candidate"] == pytest.approx(metrics["test"]["auc"], abs=1e-6)
    assert same["interval"]["low"] <= same["candidate"] - same["champion"] <= same["interval"]["high"]
    assert result["reason"].startswith(f"on the same {same['rows']} test rows")


def test_retraining_refuses_a_split_that_moves_rows(prefect_api: str, tmp_path: Path) -> None:
    from flows.deploy import retrain
    from tasks.errors import ConfigError

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["split"]["method"] = "stratified"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="write `method: hash` under data.split"):
        retrain(str(tmp_path / "params.yaml"))
