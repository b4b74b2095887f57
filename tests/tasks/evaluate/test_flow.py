"""The real train and evaluate flows on a small planted dataset, then `dvc plots show` on the result.

Features are written straight to the feature store (tabular through the real tabular
preprocessing, text as a noise embedding), so no pretrained encoder has to run: the subject
here is what evaluate writes, not extraction.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.conftest import REPO

pytestmark = pytest.mark.slow

ROWS = 400


def _params() -> dict:
    return {
        "data": {
            "sources": [{"path": "items.csv"}],
            "id": "item_id",
            "target": "label",
            "task": "binary",
            "columns": {
                "categorical": ["colour"],
                "numeric": ["signal", "noise"],
                "text": ["note"],
                "image": [],
            },
            "image_root": "images",  # "." would hold the outputs, which the params stage refuses
            "audio_root": "audio",  # likewise
            "demo": None,
        },
        "fusion": {"head": "concat", "hidden": 32, "dropout": 0.0},
        "train": {"epochs": 12, "lr": 0.003, "batch_size": 64, "patience": 12, "seed": 0, "device": "cpu"},
    }


def _items(seed: int = 0) -> pd.DataFrame:
    """`signal` decides the label (plus noise); `noise`, `colour` and `note` carry nothing."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=ROWS)
    frame = pd.DataFrame(
        {
            "item_id": [f"i{i:04d}" for i in range(ROWS)],
            "label": np.where(signal + 0.3 * rng.normal(size=ROWS) > 0, "yes", "no"),
            "colour": rng.choice(["red", "green", "blue"], size=ROWS),
            "signal": signal,
            "noise": rng.normal(size=ROWS),
            "note": [f"note {w}" for w in rng.choice(["a", "b", "c"], size=ROWS)],
        }
    )
    for column in ("item_id", "label", "colour", "note"):
        frame[column] = frame[column].astype("string")
    return frame


def _write_inputs(workdir: Path) -> None:
    """params.yaml, the aligned table and the three feature files, as the earlier stages would."""
    from tasks.atomic import write_json
    from tasks.config import params_from_dict
    from tasks.data.align import ID, PRESENT, SPLIT, align
    from tasks.features.feature_store import write_blocks
    from tasks.features.tabular import fit_tabular, transform_tabular
    from tasks.paths import Layout

    (workdir / "params.yaml").write_text(yaml.safe_dump(_params(), sort_keys=False))
    params = params_from_dict(_params())
    frame = _items()
    frame.to_csv(workdir / "items.csv", index=False)
    layout = Layout(workdir)
    aligned, report = align(params.data, [("items.csv", frame)])
    layout.aligned_dir.mkdir(parents=True)
    aligned.to_parquet(layout.aligned, index=False)
    write_json({"rows": report.rows}, layout.align_summary)
    ids = aligned[ID].to_numpy(dtype=object)
    state = fit_tabular(aligned[aligned[SPLIT] == "train"], ["colour"], ["signal", "noise"])
    tabular = transform_tabular(aligned, state)
    write_blocks(
        layout.feature_file("tabular"),
        ids,
        {"tabular": tabular},
        {"tabular": np.ones(len(ids), dtype=bool)},
        {"tabular_state": state.to_json()},
    )
    note = np.random.default_rng(1).normal(size=(len(ids), 16)).astype(np.float32)
    write_blocks(
        layout.feature_file("text"),
        ids,
        {"text.note": note},
        {"text.note": aligned[PRESENT + "note"].to_numpy(dtype=bool)},
        {},
    )
    write_blocks(layout.feature_file("image"), ids, {}, {}, {})


@pytest.fixture(scope="module")
def evaluated(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from flows.evaluate import evaluate
    from flows.train import train

    workdir = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        _write_inputs(workdir)
        train(params_path="params.yaml")
        report = evaluate(params_path="params.yaml")
    return workdir, report


def test_evaluation_json_is_what_the_flow_returns(evaluated: tuple[Path, dict]) -> None:
    workdir, report = evaluated
    assert json.loads((workdir / "reports" / "evaluation.json").read_text()) == report


def test_metrics_json_is_the_headline_of_it(evaluated: tuple[Path, dict]) -> None:
    from tasks.evaluate.summary import headline

    workdir, report = evaluated
    shown = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert shown == headline(report) and shown["final"] == report["test"]["auc"]


def test_the_majority_baseline_is_scored_and_bootstrapped_like_sklearn(evaluated: tuple[Path, dict]) -> None:
    """No input at all: a constant probability, so its AUC is exactly 0.5 and fused beats it clearly."""
    _, report = evaluated
    assert report["baselines"]["majority"]["auc"] == 0.5 and report["val"]["majority"] == 0.5
    assert report["intervals"]["fused_minus_majority"]["low"] > 0


def test_the_report_opens_with_the_verdict(evaluated: tuple[Path, dict]) -> None:
    from tasks.evaluate.report import verdict_sentence
    from tasks.evaluate.summary import verdict

    workdir, report = evaluated
    first = (workdir / "reports" / "report.md").read_text().split("\n\n")[1]  # after the title
    assert first.startswith(f"The final model's auc {report['test']['auc']:.3f} ")
    assert first == verdict_sentence(verdict(report), report["sklearn"]["selected"])


def test_the_leaderboard_command_prints_every_trained_model(
    evaluated: tuple[Path, dict], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli import main

    workdir, report = evaluated
    monkeypatch.chdir(workdir)
    main(["leaderboard"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:5] == ["model", "role", "weight", "val", "auc"]
    models = [line.split()[0] for line in printed[1:-1]]
    trained = [t["name"] for t in report["ensemble"]["tried"]]
    assert sorted(models) == sorted(["final", *trained, "sklearn", "majority"])
    assert "## Leaderboard" in (workdir / "reports" / "report.md").read_text()


def test_the_leaderboard_command_before_evaluate_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["leaderboard"])
    error = capsys.readouterr().err
    assert exited.value.code == 2 and error.count("\n") == 1
    assert "reports/leaderboard.csv" in error and "evaluate has not run" in error


def test_sklearn_baseline_is_reported_next_to_the_fused_model(evaluated: tuple[Path, dict]) -> None:
    _, report = evaluated
    assert set(report["baselines"]) - {"fused_head"} == {"tabular", "text", "sklearn", "majority"}
    assert report["sklearn"]["selected"] in report["sklearn"]["candidates"]


def test_primary_metric_has_a_bootstrap_interval_around_it(evaluated: tuple[Path, dict]) -> None:
    _, report = evaluated
    interval = report["intervals"]["fused"]
    assert interval["low"] <= report["test"]["auc"] <= interval["high"]


def test_masking_the_planted_modality_is_what_hurts(evaluated: tuple[Path, dict]) -> None:
    _, report = evaluated
    assert report["ablation"]["without_tabular"]["auc"] < report["ablation"]["without_text"]["auc"] - 0.2


def test_importance_ranks_the_planted_column_above_the_noise_column(evaluated: tuple[Path, dict]) -> None:
    workdir, _ = evaluated
    importance = pd.read_csv(workdir / "reports" / "plots" / "importance.csv").set_index("feature")
    assert importance.loc["signal", "importance"] > importance.loc["noise", "importance"] + 0.1


def test_figures_for_a_binary_task_are_written(evaluated: tuple[Path, dict]) -> None:
    workdir, _ = evaluated
    expected = {
        "roc.png",
        "precision_recall.png",
        "confusion.png",
        "calibration.png",
        "learning_curve.png",
        "embedding.png",
        "importance.png",
        "contributions.png",
    }
    assert {p.name for p in (workdir / "reports" / "figures").glob("*.png")} == expected


def test_every_figure_is_a_readable_png(evaluated: tuple[Path, dict]) -> None:
    workdir, _ = evaluated
    for path in (workdir / "reports" / "figures").glob("*.png"):
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100, path.name


def test_report_links_only_figures_that_exist(evaluated: tuple[Path, dict]) -> None:
    workdir, _ = evaluated
    report = (workdir / "reports" / "report.md").read_text()
    links = re.findall(r"\]\((figures/[^)]+)\)", report)
    assert len(links) == 8 and all((workdir / "reports" / link).is_file() for link in links)


def test_report_has_every_section_a_reader_needs(evaluated: tuple[Path, dict]) -> None:
    workdir, _ = evaluated
    report = (workdir / "reports" / "report.md").read_text()
    for heading in (
        "## Data",
        "## Test metrics",
        "## Baselines a user would otherwise use",
        "## What each modality contributes",
        "## Feature importance",
        "## Figures",
    ):
        assert heading in report, heading


def test_report_artifacts_are_published_under_stable_keys(evaluated: tuple[Path, dict]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort

    keys = ["fuseline-report", "fuseline-metrics", "fuseline-importance", "fuseline-contributions"]

    async def query() -> set[str]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
                flow_run_filter=FlowRunFilter(),
                task_run_filter=TaskRunFilter(),
                sort=ArtifactSort.CREATED_DESC,
                limit=50,
            )
            return {a.key for a in found}

    assert asyncio.run(query()) == set(keys)


def test_rerunning_evaluate_gives_identical_metrics(evaluated: tuple[Path, dict]) -> None:
    from flows.evaluate import evaluate

    workdir, report = evaluated
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        assert evaluate(params_path="params.yaml") == report


def test_dvc_plots_show_renders_the_evaluation_plots(evaluated: tuple[Path, dict]) -> None:
    workdir, _ = evaluated
    shutil.copy(REPO / "dvc.yaml", workdir / "dvc.yaml")
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(args, cwd=workdir, env=env, check=True, capture_output=True)
    shown = subprocess.run(
        ["dvc", "plots", "show", "--json"], cwd=workdir, env=env, check=True, capture_output=True, text=True
    )
    plots = json.loads(shown.stdout)
    rendered = {name for name, entries in plots["data"].items() if entries}
    expected = {
        "Learning curve",
        "ROC",
        "Confusion matrix",
        "Precision-recall",
        "Calibration",
        "Permutation importance",
        "Modality contributions",
        "reports/figures/embedding.png",
    }
    assert expected <= rendered
    errors = {e.get("name") or e.get("msg") for e in plots.get("errors", [])}
    assert errors <= {"Predicted vs true", "Residuals"}  # regression-only plots, absent for binary


def test_evaluate_runs_on_one_thread_and_gives_the_callers_threads_back() -> None:
    import torch

    from tasks.device import single_threaded

    before = torch.get_num_threads()
    with single_threaded():
        inside = torch.get_num_threads()
    assert inside == 1 and torch.get_num_threads() == before


def test_the_best_single_modality_is_chosen_on_val(evaluated: tuple[Path, dict]) -> None:
    from tasks.evaluate.report import best_single

    workdir, report = evaluated
    assert set(report["val"]) - {"fused_head"} == {"fused", "tabular", "text", "sklearn", "majority"}
    assert "Best single modality (chosen on val)" in (workdir / "reports" / "report.md").read_text()
    # test favours text, val favours tabular: the choice follows val
    metrics = {
        "primary_metric": "auc",
        "intervals": {"higher_is_better": True},
        "baselines": {"text": {"auc": 0.9}, "tabular": {"auc": 0.8}, "sklearn": {"auc": 0.99}},
        "val": {"fused": 0.9, "text": 0.7, "tabular": 0.85},
    }
    assert best_single(metrics) == "tabular"


def test_the_reported_model_is_the_ensemble_chosen_on_val(evaluated: tuple[Path, dict]) -> None:
    workdir, report = evaluated
    ensemble = report["ensemble"]
    weights = ensemble["members"]
    assert abs(sum(weights.values()) - 1.0) < 1e-9 and all(w > 0 for w in weights.values())
    assert ensemble["selected_by"] == "val auc"
    # Selection never loses to its best member on val, and test is the ensemble's, not the head's.
    assert ensemble["val"] >= max(ensemble["member_val"].values()) - 1e-12
    assert report["val"]["fused"] == pytest.approx(ensemble["val"])
    tried = {t["name"]: t for t in ensemble["tried"]}
    assert {"fused", "tabular", "text", "sklearn_linear"} <= set(tried)
    assert all(t["status"] == "trained" and t["seconds"] >= 0 for t in tried.values())
    if set(weights) != {"fused"}:
        assert "fused_head" in report["baselines"] and "fused_minus_fused_head" in report["intervals"]
    assert "Models tried and the ensemble" in (workdir / "reports" / "report.md").read_text()


def test_an_ablation_of_a_never_missing_modality_is_marked_unreliable(evaluated: tuple[Path, dict]) -> None:
    """Issue 14 §3.3: every train row has tabular and text and modality_dropout is 0, so their
    'missing' embeddings never trained; the report says so instead of presenting the number."""
    workdir, report = evaluated
    assert report["ablation_untrained"] == ["tabular", "text"]
    assert "**Unreliable:** *fused without* tabular, text" in (workdir / "reports" / "report.md").read_text()


def test_untrained_missing_needs_full_presence_and_no_dropout() -> None:
    from tasks.evaluate.evaluation import untrained_missing
    from tasks.train.dataset import FeatureSet

    rows = FeatureSet(
        ids=np.array(["a", "b"]),
        split=np.array(["train", "train"]),
        target=np.zeros(2, dtype=np.float32),
        inputs={"tabular": np.zeros((2, 1)), "image.photo": np.zeros((2, 1)), "text.t": np.zeros((2, 1))},
        present={
            "tabular": np.array([True, True]),
            "image.photo": np.array([True, False]),
            "text.t": np.array([True, True]),
        },
    )
    assert untrained_missing(rows, 0.0) == ["tabular", "text"]
    assert untrained_missing(rows, 0.1) == []
