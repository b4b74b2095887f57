"""The Prefect pipeline flow end to end, in-process, on a tiny demo dataset."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_run(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from flows.pipeline import pipeline

    workdir = tmp_path_factory.mktemp("pipeline")
    params = tiny_params(
        rows=120, encoders={"image": {"model": "efficientnet_lite0", "image_size": 96, "batch_size": 32}}
    )
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        report = pipeline(params_path="params.yaml")
    return workdir, report


def test_pipeline_writes_metrics_with_the_documented_shape(pipeline_run: tuple[Path, dict]) -> None:
    workdir, report = pipeline_run
    metrics = json.loads((workdir / "reports" / "evaluation.json").read_text())
    assert metrics["task"] == "binary" and metrics["primary_metric"] == "auc"
    assert set(metrics["test"]) == {"auc", "accuracy", "f1", "log_loss"}
    expected = {"tabular", "text", "image", "audio", "sklearn", "majority"}
    assert set(metrics["baselines"]) - {"fused_head"} == expected
    assert metrics == report


def test_pipeline_writes_a_loadable_bundle(pipeline_run: tuple[Path, dict]) -> None:
    from tasks.train.bundle import load_bundle

    workdir, _ = pipeline_run
    model, meta = load_bundle(workdir / "models")
    assert set(meta.encoders) == {"text", "image", "audio"} and meta.tabular is not None


def test_pipeline_flow_run_and_artifact_are_in_prefect(pipeline_run: tuple[Path, dict]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        TaskRunFilter,
    )
    from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort

    async def query() -> tuple[list, list]:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["fuseline-pipeline"])),
                sort=FlowRunSort.START_TIME_DESC,
                limit=10,
            )
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fuseline-metrics"])),
                flow_run_filter=FlowRunFilter(),
                task_run_filter=TaskRunFilter(),
                sort=ArtifactSort.CREATED_DESC,
                limit=10,
            )
            return runs, artifacts

    runs, artifacts = asyncio.run(query())
    assert any(r.state and r.state.is_completed() for r in runs)
    assert artifacts, "evaluate should publish the fuseline-metrics table artifact"
