"""`fuseline ui`'s server for real: a Prefect server on SQLite on a free loopback port, the
pipeline run against it (`python -m flows.pipeline`), then what the server recorded, read back
through the client API, and what the run wrote: the one pipeline run the suite makes.

The browser check (headless Chromium renders the flow-run page) takes ~30 s and needs
Chromium, so it runs only with FUSELINE_BROWSER_TESTS=1 (`make ui-screenshot` is the
same check by hand).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import copy_repo, run_ok

pytestmark = pytest.mark.slow

Repo = tuple[Path, dict[str, str]]
STAGE_FLOWS = {"demo-data", "ingest", "align", "extract", "train", "evaluate"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh server with its own SQLite database; its API URL."""
    from flows.server import start_server, stop_server

    state = tmp_path_factory.mktemp("prefect-home")
    url = start_server(_free_port(), timeout=240, state_dir=state)
    yield url
    stop_server(state)


@pytest.fixture(scope="module")
def pipeline_run(server: str, repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """`python -m flows.pipeline` in a copy of the project, reporting to `server`."""
    root = copy_repo(repo[0], tmp_path_factory.mktemp("ui") / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = 3  # what is checked is what the server saw, not the model
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_ok([sys.executable, "-m", "flows.pipeline"], root, dict(repo[1], PREFECT_API_URL=server))
    return server, root


def _query(api_url: str, what: str) -> list:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
        TaskRunFilter,
    )
    from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort, LogSort, TaskRunSort

    # Every sort and limit spelled out: Prefect 3.8.8's client sends null for omitted ones,
    # which its own server refuses (422).
    async def run() -> list:
        async with PrefectClient(api=api_url) as client:
            runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=200)
            if what == "flow_runs":
                names = {i: (await client.read_flow(i)).name for i in {r.flow_id for r in runs}}
                return [(names[r.flow_id], r) for r in runs]
            ids = FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs]))
            if what == "task_runs":
                return await client.read_task_runs(
                    flow_run_filter=ids, sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=200
                )
            if what == "logs":
                return await client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs])),
                    limit=200,
                    offset=0,
                    sort=LogSort.TIMESTAMP_DESC,  # the metrics line is near the end
                )
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fuseline-metrics"])),
                flow_run_filter=FlowRunFilter(),
                task_run_filter=TaskRunFilter(),
                sort=ArtifactSort.CREATED_DESC,
                limit=200,
            )

    return asyncio.run(run())


def test_ui_calls_the_api_of_its_own_server_not_the_default_port(server: str) -> None:
    with urllib.request.urlopen(server.removesuffix("/api") + "/ui-settings", timeout=30) as response:
        assert json.loads(response.read())["api_url"] == server


def test_pipeline_and_every_stage_subflow_completed_on_the_server(pipeline_run: tuple[str, Path]) -> None:
    runs = _query(pipeline_run[0], "flow_runs")
    completed = {name for name, run in runs if run.state and run.state.is_completed()}
    assert {"fuseline-pipeline", *STAGE_FLOWS} <= completed


def test_task_runs_and_logs_are_recorded(pipeline_run: tuple[str, Path]) -> None:
    task_names = {run.name.rsplit("-", 1)[0] for run in _query(pipeline_run[0], "task_runs")}
    assert {"train-member", "extract-tabular"} <= task_names
    messages = [log.message for log in _query(pipeline_run[0], "logs")]
    assert any(message.startswith("metrics: ") for message in messages)


def test_metrics_artifact_belongs_to_the_runs_evaluate_subflow(pipeline_run: tuple[str, Path]) -> None:
    evaluate = [run.id for name, run in _query(pipeline_run[0], "flow_runs") if name == "evaluate"]
    artifacts = _query(pipeline_run[0], "artifacts")
    assert [a.flow_run_id for a in artifacts] == evaluate


def test_pipeline_writes_metrics_with_the_documented_shape(pipeline_run: tuple[str, Path]) -> None:
    metrics = json.loads((pipeline_run[1] / "reports" / "evaluation.json").read_text())
    assert metrics["task"] == "binary" and metrics["primary_metric"] == "auc"
    assert set(metrics["test"]) == {"auc", "accuracy", "f1", "log_loss"}
    expected = {"tabular", "text", "image", "audio", "sklearn", "majority"}
    assert set(metrics["baselines"]) - {"fused_head"} == expected


def test_pipeline_writes_a_loadable_bundle(pipeline_run: tuple[str, Path]) -> None:
    from tasks.train.bundle import load_bundle

    model, meta = load_bundle(pipeline_run[1] / "models")
    assert set(meta.encoders) == {"text", "image", "audio"} and meta.tabular is not None


@pytest.mark.skipif(
    os.environ.get("FUSELINE_BROWSER_TESTS") != "1" or shutil.which("chromium") is None,
    reason="browser check: set FUSELINE_BROWSER_TESTS=1 (needs chromium)",
)
def test_flow_run_pages_render_in_headless_chromium(pipeline_run: tuple[str, Path]) -> None:
    """The pipeline run's page (its stage subflows), then evaluate's (whose graph shows the artifacts)."""
    api_url, root = pipeline_run
    runs = _query(api_url, "flow_runs")
    script = Path(__file__).resolve().parents[2] / "scripts" / "ui_screenshot.py"
    for flow_name in ("fuseline-pipeline", "evaluate"):
        (run,) = [run for name, run in runs if name == flow_name]
        output = root / "reports" / "ui" / f"{flow_name}.png"
        args = [sys.executable, str(script), "--api-url", api_url, "--flow-run-id", str(run.id)]
        subprocess.run([*args, "--output", str(output)], check=True, timeout=600)
        dom = output.with_suffix(".html").read_text()
        assert run.name in dom and flow_name in dom and "Task Runs" in dom
        assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and output.stat().st_size > 20_000
