"""bench/peers.py's parts that need no AutoGluon: the sample, the split export, scoring, the table.

AutoGluon itself runs in its own virtualenv (bench/peers.py builds it on first use); fitting
it is the benchmark, not a test.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tasks.evaluate.evaluation import bootstrap_intervals
from tasks.scores.metrics import compute_metrics
from tests.bench_module import BENCH_DIR, load_bench

COLUMNS = {"categorical": ["color"], "numeric": ["price"], "text": ["title"], "image": ["photo"]}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("peers")


def aligned_table(path: Path, rows: int = 60, seed: int = 0) -> pd.DataFrame:
    """An aligned.parquet as align writes it: id, split, target, the columns, presence masks."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "row_id": [f"r{i:03d}" for i in range(rows)],
            "split": np.array(["train", "val", "test"])[np.arange(rows) % 3],
            "target": np.array(["cat", "dog", "fox"])[rng.integers(0, 3, rows)],
            "color": pd.array([None if i % 7 == 0 else f"c{i % 4}" for i in range(rows)], dtype="string"),
            "price": np.where(np.arange(rows) % 5 == 0, np.nan, rng.normal(10, 2, rows)),
            "title": pd.array([f"a pet called {i}" for i in range(rows)], dtype="string"),
            "photo": pd.array([f"images/{i}.jpg" for i in range(rows)], dtype="string"),
            "present__title": np.ones(rows, dtype=bool),
        }
    )
    frame.to_parquet(path, index=False)
    return frame


def test_the_split_export_holds_each_split_with_the_declared_columns_only(
    bench: ModuleType, tmp_path: Path
) -> None:
    aligned = aligned_table(tmp_path / "aligned.parquet")
    spec = bench.export_split(
        tmp_path / "aligned.parquet", COLUMNS, "multiclass", "f1_macro", tmp_path / "out"
    )
    assert spec["rows"] == {"train": 20, "val": 20, "test": 20}
    assert spec["eval_metric"] == "f1_macro" and spec["problem_type"] == "multiclass"
    assert json.loads((tmp_path / "out" / "spec.json").read_text()) == spec
    for split in ("train", "val", "test"):
        table = pq.read_table(tmp_path / "out" / f"{split}.parquet")
        assert table.schema.metadata is None  # an older pandas reads plain values, no pandas dtypes
        assert table.column_names == ["row_id", "color", "price", "title", "target"]  # no image, no masks
        ids = table.column("row_id").to_pylist()
        assert ids == aligned.loc[aligned["split"] == split, "row_id"].tolist()
    read = {
        split: pd.read_parquet(tmp_path / "out" / f"{split}.parquet") for split in ("train", "val", "test")
    }
    read["test"].loc[0, "color"] = "violet"  # a value train and val never had
    typed = bench.typed(read, spec["roles"])
    train, test = typed["train"], typed["test"]
    assert isinstance(train["color"].dtype, pd.CategoricalDtype) and train["color"].isna().sum() == 3
    assert all(frame["color"].dtype == train["color"].dtype for frame in typed.values())  # one category set
    assert test["color"].isna().iloc[0] and list(train["color"].cat.categories) == ["c0", "c1", "c2", "c3"]
    assert train["price"].dtype == np.float64 and train["title"].dtype == object


def test_predictions_line_up_by_row_id_and_class_whatever_order_autogluon_wrote(bench: ModuleType) -> None:
    target = pd.Series(["dog", "cat", "fox"], index=["b", "a", "c"])
    fused = pd.DataFrame(
        {
            "row_id": ["a", "b", "c"],
            "prob_cat": [0.7, 0.2, 0.1],
            "prob_dog": [0.2, 0.7, 0.1],
            "prob_fox": [0.1, 0.1, 0.8],
        }
    )
    peer = pd.DataFrame({"row_id": ["c", "a", "b"], "dog": [0.3, 0.4, 0.9], "cat": [0.7, 0.6, 0.1]})  # no fox
    y_true, arrays = bench.prediction_arrays("multiclass", target, fused, peer)
    assert y_true.tolist() == [0, 1, 2]
    assert arrays["fused"].argmax(axis=1).tolist() == [0, 1, 2]
    np.testing.assert_allclose(arrays["autogluon"], [[0.6, 0.4, 0.0], [0.1, 0.9, 0.0], [0.7, 0.3, 0.0]])
    with pytest.raises(ValueError, match="miss some"):
        bench.prediction_arrays("multiclass", target, fused, peer.iloc[:2])
    binary = fused[["row_id", "prob_dog"]]
    y_true, arrays = bench.prediction_arrays("binary", target.replace("fox", "cat"), binary, peer)
    assert y_true.tolist() == [0, 1, 0] and arrays["autogluon"].tolist() == [0.4, 0.9, 0.3]


def test_both_systems_are_scored_by_the_projects_metrics_on_the_same_resamples(bench: ModuleType) -> None:
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, 300)
    peer = rng.dirichlet(np.ones(3), 300)
    fused = peer.copy()
    fused[np.arange(300), y_true] += 1.0  # right on every row where the peer was not
    fused /= fused.sum(axis=1, keepdims=True)
    scored = bench.side_by_side("multiclass", "accuracy", y_true, fused, peer)
    assert list(scored["fused"]) == ["accuracy", "f1_macro"]
    expected = compute_metrics("multiclass", y_true, peer)
    assert scored["autogluon"]["f1_macro"]["value"] == pytest.approx(expected["f1_macro"], abs=1e-4)
    alone = bootstrap_intervals("multiclass", y_true, {"fused": fused}, seed=0)["fused"]
    assert scored["fused"]["accuracy"]["ci95"] == [round(alone["low"], 4), round(alone["high"], 4)]
    difference = scored["fused_minus_autogluon"]["accuracy"]
    assert difference["value"] > 0 and difference["ci95"][0] > 0  # paired: always ahead, so above 0
    same = bench.side_by_side("multiclass", "f1_macro", y_true, peer, peer)["fused_minus_autogluon"]
    assert same["f1_macro"] == {"value": 0.0, "ci95": [0.0, 0.0]}


def fuseline_run(table: pd.DataFrame, fit_seconds: float, right: bool) -> dict:
    """What run_fuseline returns for a preset: its summary, fit seconds, test predictions."""
    test = table[table["split"] == "test"]
    probs = np.full((len(test), 3), 0.1)
    picked = (
        test["target"].map({"cat": 0, "dog": 1, "fox": 2}).to_numpy() if right else np.zeros(len(test), int)
    )
    probs[np.arange(len(test)), picked] = 0.8
    frame = pd.DataFrame({"row_id": test["row_id"].to_numpy()})
    for i, label in enumerate(["cat", "dog", "fox"]):
        frame[f"prob_{label}"] = probs[:, i]
    summary = {"task": "multiclass", "primary_metric": "accuracy", "ensemble": None, "stage_seconds": {}}
    return {"summary": summary, "fit_seconds": fit_seconds, "predictions": frame}


def test_the_table_and_the_json_line_show_each_preset_autogluon_and_the_differences(
    bench: ModuleType, tmp_path: Path
) -> None:
    table = aligned_table(tmp_path / "aligned.parquet")
    spec = bench.export_split(
        tmp_path / "aligned.parquet", COLUMNS, "multiclass", "accuracy", tmp_path / "out"
    )
    runs = {"fast": fuseline_run(table, 12.34, right=True), "best": fuseline_run(table, 50.0, right=False)}
    test = table[table["split"] == "test"].iloc[::-1]  # AutoGluon's rows in another order
    peer_frame = pd.DataFrame({"row_id": test["row_id"].to_numpy(), "fox": 1.0, "cat": 0.0, "dog": 0.0})
    peer = {
        "version": "1.6.3",
        "fit_seconds": 40.04,
        "process_seconds": 47.0,
        "best_model": "WeightedEnsemble_L2",
        "models": [],
        "predictions": peer_frame,
    }
    entry = bench.dataset_entry(runs, peer, tmp_path / "aligned.parquet", spec)
    fox_share = float((test["target"] == "fox").mean())
    assert entry["fuseline"]["fast"]["scores"]["accuracy"]["value"] == 1.0
    assert entry["autogluon"]["scores"]["accuracy"]["value"] == pytest.approx(fox_share, abs=1e-4)
    assert entry["fuseline"]["fast"]["minus_autogluon"]["accuracy"]["value"] == pytest.approx(
        1 - fox_share, abs=1e-4
    )
    entry |= {"time_budget_seconds": 50}
    entry["autogluon"]["preset"] = "medium_quality"
    report = {"datasets": {"tiny": entry}, "skipped": {}}
    lines = bench.format_table(report).splitlines()
    assert lines[0].split()[:5] == ["dataset", "system", "test", "rows", "accuracy"]
    systems = [
        "fuseline fast",
        "fuseline best",
        "autogluon medium_quality",
        "fuseline fast - autogluon",
        "fuseline best - autogluon",
    ]
    assert len(lines) == len(systems) + 2
    assert all(f"  {system}  " in line for line, system in zip(lines[1:-1], systems, strict=True))
    assert "12.3" in lines[1] and "40.0" in lines[3] and lines[-1].endswith("tiny 50 s")
    assert json.loads(json.dumps(report)) == report  # plain JSON: no numpy scalars left


def test_a_missing_dataset_is_skipped_and_json_is_the_last_line(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench.main(["--json", "--datasets", "petfinder,pokemon", "--data-root", str(tmp_path / "absent")])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads(last)
    assert report["datasets"] == {} and set(report["skipped"]) == {"petfinder", "pokemon"}
    bench.main(["--datasets", "petfinder", "--data-root", str(tmp_path / "absent")])
    assert "skipped" in capsys.readouterr().out
    for wrong in (["--datasets", "imagenet"], ["--presets", "fastest"], ["--rows", "5"]):
        with pytest.raises(SystemExit):
            bench.main(wrong)


def test_rows_samples_the_source_and_drops_classes_too_rare_to_split(
    bench: ModuleType, tmp_path: Path
) -> None:
    source = tmp_path / "petfinder" / "petfinder.csv"
    source.parent.mkdir()
    labels = [0] * 4 + [1] * 300 + [2] * 296
    pd.DataFrame(
        {
            "PetID": [f"p{i}" for i in range(600)],
            "AdoptionSpeed": labels,
            "Description": ["a calm dog, house trained"] * 600,
            "split": ["train", "test"] * 300,
        }
    ).to_csv(source, index=False)
    params, dropped = bench.fuseline_params("petfinder", tmp_path, tmp_path / "work", 30, 200)
    assert params["train"]["time_limit"] == 30.0 and dropped == ["0"]
    sampled_path = Path(params["data"]["sources"][0]["path"])
    assert sampled_path == tmp_path / "work" / "sample" / "petfinder.csv"
    sampled = pd.read_csv(sampled_path)
    assert 180 < len(sampled) <= 200 and set(sampled["AdoptionSpeed"]) == {1, 2}
    assert sampled["PetID"].str[1:].astype(int).is_monotonic_increasing  # the file's order
    again, _ = bench.sample_source(source, "AdoptionSpeed", 200, tmp_path / "again")
    assert pd.read_csv(again).equals(sampled)  # seeded


def test_a_finished_venv_is_reused_without_installing(bench: ModuleType, tmp_path: Path) -> None:
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    (tmp_path / "venv" / ".peers-requirement").write_text(bench.REQUIREMENT + "\n")
    assert bench.peers_python(tmp_path / "venv") == python
    env = {"PYTHONPATH": "/x", "PATH": "/bin"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        cleaned = bench.clean_env()
    assert "PYTHONPATH" not in cleaned and cleaned["PATH"] == "/bin"


def test_the_script_imports_only_the_standard_library_at_its_top(bench: ModuleType) -> None:
    """The worker runs this file in AutoGluon's venv, where nothing of the project is installed."""
    tree = ast.parse((BENCH_DIR / "peers.py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names and names <= set(sys.stdlib_module_names) | {"__future__"}
