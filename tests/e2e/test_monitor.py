"""`fuseline monitor` on the reproduced demo project: a fresh sample drifts nowhere, planted shifts do.

The fresh sample comes from the demo's own generator with another seed (the same
distribution, other rows, other images and clips). The shifted batch is that sample with
three planted shifts: prices tripled, no kitchen items, photos darkened; its titles,
descriptions and clips are unchanged and must stay unflagged.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from PIL import Image, ImageEnhance

from tests.e2e.conftest import copy_repo

pytestmark = pytest.mark.slow

Repo = tuple[Path, dict[str, str]]
ROWS = 120  # fresh rows: each is encoded once per modality on CPU, which is what this module costs
SHIFTED_COLUMNS = {"price", "category", "photo"}
UNCHANGED_COLUMNS = {"title", "description", "clip"}


@pytest.fixture(scope="module")
def project(repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private copy of the reproduced project (runs write reports and cache shards), as cwd."""
    root = copy_repo(repo[0], tmp_path_factory.mktemp("monitor") / "project")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        yield root


# The project's rows are seed 7. A 120-row sample can itself sit far from the generator: seed 8's
# held 13 % kitchen items against the generator's 24 % (3.0 standard errors), and a chi-square
# test rightly told it from the project's 161 reference rows (p 0.0006). Seed 11 is the first
# after it whose every category is within 1.5 standard errors; test_the_fresh_sample_is_typical
# checks that premise, so the no-drift test below asks about a sample that is "the same data".
FRESH_SEED = 11
TYPICAL_Z = 1.5


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """New demo rows from the same generator (FRESH_SEED; the project's rows are seed 7)."""
    from tasks.data.demo import generate_demo

    out = tmp_path_factory.mktemp("fresh")
    generate_demo(out / "items.csv", out / "images", rows=ROWS, seed=FRESH_SEED, audio_root=out / "audio")
    return out


@pytest.fixture(scope="module")
def shifted(fresh: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fresh rows with prices tripled, kitchen items removed and photos darkened."""
    out = tmp_path_factory.mktemp("shifted")
    rows = pd.read_csv(fresh / "items.csv", dtype=str, keep_default_na=False)
    rows = rows[rows["category"] != "kitchen"].copy()
    price = pd.to_numeric(rows["price"].replace("", None))
    rows["price"] = [f"{3 * p:.2f}" if pd.notna(p) else "" for p in price]
    (out / "images").mkdir()
    for photo in rows["photo"]:
        with Image.open(fresh / "images" / photo) as image:
            darker = ImageEnhance.Brightness(image.convert("RGB")).enhance(0.35)
        darker.save(out / "images" / photo, quality=90)
    shutil.copytree(fresh / "audio", out / "audio")
    rows.to_csv(out / "items.csv", index=False)
    return out


def _run(batch: Path, **kwargs: Any) -> tuple[Any, dict[str, Any], float]:
    """The monitor flow on `batch`/items.csv: (final state, summary, seconds)."""
    from flows.monitor import monitor

    started = time.perf_counter()
    roots = {"image": str(batch / "images"), "audio": str(batch / "audio")}
    state = monitor(input_path=str(batch / "items.csv"), roots=roots, return_state=True, **kwargs)
    seconds = time.perf_counter() - started
    summary = state.result()
    print(f"\n{batch.name}: {state.name} in {seconds:.1f} s")
    for check in summary["checks"]:
        print(
            f"  {check['column']:12} {check['aspect']:16} {check['test']:18} p={check['p_value']:.3g} "
            f"p_adj={check['p_adjusted']:.3g} "
            f"{check['effect']}={check['score']:.3f} {'DRIFT' if check['drifted'] else ''} {check['detail']}"
        )
    return state, summary, seconds


@pytest.fixture(scope="module")
def fresh_run(project: Path, fresh: Path) -> tuple[Any, dict[str, Any], float]:
    return _run(fresh)


@pytest.fixture(scope="module")
def shifted_run(project: Path, shifted: Path) -> tuple[Any, dict[str, Any], float]:
    return _run(shifted)


def test_the_fresh_sample_is_typical_of_the_generator(fresh: Path) -> None:
    from tasks.data.demo import _CATEGORIES

    cells = pd.read_csv(fresh / "items.csv", dtype=str, keep_default_na=False)["category"]
    cells = cells[cells != ""]
    for name, frequency, _ in _CATEGORIES:
        share = float((cells == name).mean())
        standard_error = (frequency * (1 - frequency) / len(cells)) ** 0.5
        assert abs(share - frequency) <= TYPICAL_Z * standard_error, (name, share, frequency)


def test_a_fresh_sample_of_the_same_data_reports_no_drift(fresh_run: tuple) -> None:
    state, summary, _ = fresh_run
    assert [c["column"] for c in summary["checks"] if c["drifted"]] == []
    assert (state.is_completed(), state.name, summary["drifted"]) == (True, "Completed", False)


def test_every_column_and_the_prediction_are_checked(fresh_run: tuple) -> None:
    aspects = {(c["column"], c["aspect"]) for c in fresh_run[1]["checks"]}
    expected = {
        ("price", "distribution"), ("category", "unseen"), ("photo", "embedding"), ("clip", "embedding"),
        ("title", "embedding"), ("description", "missing"), ("prediction", "predicted class"),
    }  # fmt: skip
    assert expected <= aspects


def test_planted_shifts_are_flagged_on_their_columns_only(shifted_run: tuple) -> None:
    drifted = set(shifted_run[1]["drifted_columns"])
    assert SHIFTED_COLUMNS <= drifted and not drifted & UNCHANGED_COLUMNS


def test_drift_is_named_in_the_run_state(shifted_run: tuple) -> None:
    state = shifted_run[0]
    assert state.is_completed() and state.name == "Drift detected"
    assert all(column in state.message for column in SHIFTED_COLUMNS)


def test_report_files_and_artifacts_are_published(project: Path, shifted_run: tuple) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort

    async def newest(key: str) -> object:
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                flow_run_filter=FlowRunFilter(),
                task_run_filter=TaskRunFilter(),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
            return artifacts[0].data

    files = shifted_run[1]["files"]
    names = ["drift.json", "drift.md", "drift.png", "performance.json", "performance.png"]
    assert sorted(Path(path).name for path in files.values()) == names
    assert all((project / path).parent == project / "reports" / "monitor" for path in files.values())
    assert f"# {shifted_run[1]['headline']}" in str(asyncio.run(newest("fuseline-drift")))
    table = asyncio.run(newest("fuseline-drift-table"))
    rows = json.loads(table) if isinstance(table, str) else table
    assert {row["column"] for row in rows if row["drifted"]} == set(shifted_run[1]["drifted_columns"])


def test_fuseline_monitor_prints_each_drifted_column_and_exits_0(
    shifted: Path, shifted_run: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    main(
        [
            "monitor",
            "--input",
            str(shifted / "items.csv"),
            "--root",
            f"image={shifted / 'images'}",
            "--root",
            f"audio={shifted / 'audio'}",
        ]
    )  # fmt: skip  (returns: exit status 0)
    out = capsys.readouterr().out
    drift_lines = [line.strip() for line in out.splitlines() if line.strip().startswith("drift: ")]
    assert {line.split()[1] for line in drift_lines} == set(shifted_run[1]["drifted_columns"])


def test_scheduled_run_compares_only_rows_the_model_has_not_seen(project: Path) -> None:
    """Without --input the batch is the rows of the sources the served model never saw: here none,
    since the sources are what it was trained on (its train rows are the reference, not the batch)."""
    from flows.monitor import monitor

    state = monitor(return_state=True)
    summary = state.result()
    assert summary["batch"] == "0 rows of the current sources the model has not seen (200 rows in all)"
    assert not summary["drifted"]


def test_drift_starts_the_retrain_deployment_when_asked(project: Path, shifted: Path) -> None:
    from prefect.client.orchestration import get_client

    from flows.deploy import deployment

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["monitor"] = {**params.get("monitor", {}), "retrain_on_drift": True}
    (project / "params-retrain.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    deployment_id = deployment("params.yaml").apply()  # registered, not served: its run stays scheduled
    _, summary, _ = _run(shifted, params_path="params-retrain.yaml", model=None)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(summary["retrain_flow_run"])
        client.delete_flow_run(run.id)  # nothing will run it; leave no scheduled run behind
    assert run.deployment_id == deployment_id
