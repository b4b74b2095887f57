"""Batch prediction never writes over what it reads, and bad paths are one line, not a traceback.

Issue 11, class 1: `--output new.csv` replaced the input with Parquet, `--output
models/bundle.json` destroyed the bundle, an existing directory or a `--model` that is a
symlink loop or holds a NUL byte ended in a traceback. The checks (tasks/pathcheck.py) run on
real files; the command-line tests call `fuseline predict` (flows.cli.main), whose refusals
all happen before a Prefect flow starts, so no server is needed.

Issue 25, item 6: what the output holds (the data's id name, labels in the target's type)
and where it goes without `--output` (predictions/<input stem>.parquet, not the project root).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from flows.cli import main
from modelzoo.registry import lookup
from tasks.errors import BundleError, DataError
from tasks.pathcheck import check_input_path, check_model_path, check_output_path
from tasks.serve.promotion import decide, promote
from tasks.train.bundle import META, WEIGHTS, BundleMeta, write_bundle
from tests.conftest import tiny_params

TOO_LONG = "x" * 5000  # longer than NAME_MAX and PATH_MAX


def write_tiny_bundle(models: Path) -> None:
    """A real two-class concat head over three tabular features: a bundle prediction can load."""
    head_cls = lookup("head", "concat")
    torch.manual_seed(0)
    model = head_cls({"tabular": 3}, 1, head_cls.Config(hidden=4, dropout=0.0))
    meta = BundleMeta(
        task="binary", fusion={"head": "concat", "hidden": 4, "dropout": 0.0}, in_dims={"tabular": 3},
        out_dim=1, classes=("no", "yes"), target_scaling=None, encoders={}, tabular=None, best_epoch=1,
        params={},
    )  # fmt: skip
    write_bundle(models, model, meta)


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny bundle in models/, new rows as CSV and Parquet, params.yaml; the working directory."""
    write_tiny_bundle(tmp_path / "models")
    rows = pd.DataFrame({"item_id": ["a", "b"], "price": [1.0, 2.0]})
    rows.to_csv(tmp_path / "new.csv", index=False)
    rows.to_parquet(tmp_path / "new.parquet", index=False)
    params = tiny_params(cache={"dir": ".cache/features"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `fuseline predict ARGV`; assert exit 2 with one stderr line, and return that line."""
    with pytest.raises(SystemExit) as exited:
        main(["predict", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fuseline: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# --- the output -----------------------------------------------------------------------------------


def test_output_equal_to_the_input_is_refused_and_the_input_kept(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(project)
    line = _refused(["--input", "new.parquet", "--output", "new.parquet"], capsys)
    assert "would overwrite new.parquet, which this run reads" in line
    assert _snapshot(project) == before


def test_output_equal_to_a_csv_input_is_refused(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(project)
    line = _refused(["--input", "new.csv", "--output", "new.csv"], capsys)
    assert "would overwrite new.csv" in line
    assert _snapshot(project) == before


@pytest.mark.parametrize("spelling", ["./new.parquet", "sub/../new.parquet", "{root}/new.parquet"])
def test_output_spelled_differently_is_still_the_input(project: Path, spelling: str) -> None:
    (project / "sub").mkdir()
    with pytest.raises(DataError, match="would overwrite"):
        check_output_path(spelling.format(root=project), inputs=["new.parquet"])


@pytest.mark.parametrize("link", [os.symlink, os.link])
def test_output_that_is_the_input_under_a_link_is_refused(project: Path, link: object) -> None:
    link(project / "new.parquet", project / "alias.parquet")  # type: ignore[operator]
    with pytest.raises(DataError, match="would overwrite"):
        check_output_path("alias.parquet", inputs=["new.parquet"])


def test_output_inside_the_model_bundle_is_refused(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(project / "models")
    line = _refused(["--input", "new.csv", "--output", f"models/{META}"], capsys)
    assert f"models/{META}" in line and "inside models" in line
    _refused(["--input", "new.csv", "--output", "models/preds.parquet"], capsys)
    assert _snapshot(project / "models") == before


def test_output_inside_a_registry_is_refused(project: Path) -> None:
    promote(project / "registry", project / "models", {}, decide("auc", 0.8, None, 0.0))
    with pytest.raises(DataError, match="inside registry"):
        check_output_path(
            "registry/v0001/model/preds.parquet", inputs=["new.csv"], protected_dirs=["registry"]
        )
    # ...and through a symlink pointing into it
    os.symlink(project / "registry" / "v0001" / "model" / WEIGHTS, project / "w.parquet")
    with pytest.raises(DataError, match="inside registry"):
        check_output_path("w.parquet", protected_dirs=["registry"])


def test_output_over_the_params_file_is_refused(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(["--input", "new.csv", "--output", "params.yaml", "--params", "params.yaml"], capsys)
    assert "would overwrite params.yaml" in line


def test_output_inside_the_feature_cache_is_refused(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refused(["--input", "new.csv", "--output", ".cache/features/p.parquet"], capsys)
    assert "inside .cache/features" in line


def test_output_that_is_an_existing_directory_is_refused(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "out.parquet").mkdir()
    line = _refused(["--input", "new.csv", "--output", "out.parquet"], capsys)
    assert "the output is an existing directory" in line


@pytest.mark.parametrize("name", ["preds.csv", "preds", "preds.parquet.tmp"])
def test_output_not_named_as_parquet_is_refused(
    project: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    line = _refused(["--input", "new.csv", "--output", name], capsys)
    assert "predictions are written as Parquet, so the output must end in .parquet or .pq" in line
    assert not (project / name).exists()


@pytest.mark.parametrize("name", ["preds.parquet", "out/deeper/preds.pq", "PREDS.PARQUET"])
def test_a_fresh_parquet_output_is_accepted(project: Path, name: str) -> None:
    assert check_output_path(name, inputs=["new.csv", "params.yaml"], protected_dirs=["models"]) == Path(name)


def test_an_output_below_a_file_is_refused(project: Path) -> None:
    with pytest.raises(DataError, match="should be a directory is a file"):
        check_output_path("new.csv/preds.parquet")


@pytest.mark.parametrize("bad", ["a\0b.parquet", f"{TOO_LONG}.parquet", "loop/preds.parquet"])
def test_an_unusable_output_name_is_one_data_error(project: Path, bad: str) -> None:
    os.symlink("loop", project / "loop")
    with pytest.raises(DataError, match="the output path contains a NUL byte|unusable output path"):
        check_output_path(bad)


# --- the model ------------------------------------------------------------------------------------


def test_model_that_is_a_symlink_loop_is_one_line(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.symlink("loop", project / "loop")
    line = _refused(["--model", "loop", "--input", "new.csv", "--output", "p.parquet"], capsys)
    assert "loop: unusable model path: it is a symlink loop" in line


def test_model_with_a_nul_byte_is_one_line(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(["--model", "mod\0els", "--input", "new.csv", "--output", "p.parquet"], capsys)
    assert "'mod\\x00els': the model path contains a NUL byte" in line


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("missing", "the path does not exist"),
        ("new.csv", "is a file"),
        (TOO_LONG, "the name is too long"),
        ("new.csv/models", "should be a directory is a file"),
    ],
)
def test_a_model_path_that_is_no_directory_is_one_line(
    project: Path, capsys: pytest.CaptureFixture[str], model: str, message: str
) -> None:
    line = _refused(["--model", model, "--input", "new.csv", "--output", "p.parquet"], capsys)
    assert message in line


def test_check_model_path_accepts_a_bundle_directory(project: Path) -> None:
    assert check_model_path("models") == Path("models")
    with pytest.raises(BundleError):
        check_model_path("models/" + META)


def test_a_registry_pointer_naming_a_path_outside_it_is_refused(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    promote(project / "registry", project / "models", {}, decide("auc", 0.8, None, 0.0))
    (project / "registry" / "current.json").write_text('{"version": "../models/.."}')
    line = _refused(["--model", "registry", "--input", "new.csv", "--output", "p.parquet"], capsys)
    assert "'../models/..' is not a version of this registry" in line


def test_an_edited_bundle_is_one_line_before_any_flow_runs(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = project / "models" / META
    meta.write_text(meta.read_text().replace('"no"', '"NO"'))
    line = _refused(["--input", "new.csv", "--output", "p.parquet"], capsys)
    assert "bundle.json was edited after the bundle was written (digest mismatch)" in line


# --- the input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("loop", "it is a symlink loop"),
        ("ne\0w.csv", "the input path contains a NUL byte"),
        (f"{TOO_LONG}.csv", "the name is too long"),
        ("absent.csv", "input file not found"),
        (".", "the input is a directory"),
    ],
)
def test_an_unusable_input_is_one_line(
    project: Path, capsys: pytest.CaptureFixture[str], path: str, message: str
) -> None:
    os.symlink("loop", project / "loop")
    line = _refused(["--input", path, "--output", "p.parquet"], capsys)
    assert message in line
    with pytest.raises(DataError, match=message):
        check_input_path(path)


# --- the flow, for callers that run it directly -----------------------------------------------------


@pytest.mark.slow
def test_the_predict_flow_refuses_before_loading_the_model(prefect_api: str, project: Path) -> None:
    """The flow checks again: called directly (or from a deployment) it must refuse the same way."""
    from flows.predict import predict

    (project / "models" / WEIGHTS).write_bytes(b"not loaded: the refusal comes first")
    before = _snapshot(project)
    with pytest.raises(DataError, match="would overwrite new.parquet"):
        predict("models", "new.parquet", "new.parquet", "params.yaml")
    with pytest.raises(DataError, match=f"inside models.*{META}|{META}.*inside models"):
        predict("models", "new.csv", f"models/{META}", "params.yaml")
    assert _snapshot(project) == before


# --- what the output holds: the user's id name, labels in the target's type (issue 25) -------------


def write_pets_bundle(
    models: Path, classes: tuple[str, ...], target_type: str | None, task: str = "multiclass"
) -> None:
    """A real head over one numeric column `x` whose data is keyed by `PetID`; `target_type` None is
    a bundle from before the type was recorded."""
    head_cls = lookup("head", "concat")
    torch.manual_seed(0)
    out_dim = 1 if task == "binary" else len(classes)
    model = head_cls({"tabular": 2}, out_dim, head_cls.Config(hidden=4, dropout=0.0))
    data = {
        "sources": [{"path": "pets.csv"}], "id": "PetID", "target": "AdoptionSpeed", "task": task,
        "columns": {"numeric": ["x"]},
    }  # fmt: skip
    meta = BundleMeta(
        task=task, fusion={"head": "concat", "hidden": 4, "dropout": 0.0}, in_dims={"tabular": 2},
        out_dim=out_dim, classes=classes, target_scaling=None, encoders={},
        tabular={"categorical": [], "numeric": [{"column": "x", "mean": 0.0, "std": 1.0}]},
        best_epoch=1, params={"data": data}, target_type=target_type,
    )  # fmt: skip
    write_bundle(models, model, meta)


def predicted(tmp_path: Path, classes: tuple[str, ...], target_type: str | None, task: str) -> pd.DataFrame:
    """`fuseline predict`'s table for 40 new rows: read, encoded and predicted as the flow's chunks do."""
    from tasks.device import pick_device
    from tasks.features.cache import FeatureCache
    from tasks.serve.predict import load_predictor, read_new_rows

    write_pets_bundle(tmp_path / "models", classes, target_type, task)
    x = np.linspace(-3, 3, 40)
    pd.DataFrame({"PetID": [f"p{i}" for i in range(40)], "x": x}).to_csv(tmp_path / "new.csv", index=False)
    cache = FeatureCache(tmp_path / "cache")
    predictor = load_predictor(tmp_path / "models", cache)
    rows = read_new_rows(tmp_path / "new.csv", predictor.data, {})
    return predictor.predict(rows, {}, cache, pick_device("cpu"))


def test_the_id_column_has_the_training_datas_id_name(tmp_path: Path) -> None:
    table = predicted(tmp_path, ("0", "2", "4"), "int", "multiclass")
    assert list(table.columns) == ["PetID", "prob_0", "prob_2", "prob_4", "prediction"]
    assert table["PetID"].tolist() == [f"p{i}" for i in range(40)]


@pytest.mark.parametrize(
    ("task", "classes", "target_type", "dtype", "values"),
    [
        ("multiclass", ("0", "2", "4"), "int", "int64", {0, 2, 4}),
        ("multiclass", ("0.5", "1.5", "2.5"), "float", "float64", {0.5, 1.5, 2.5}),
        ("binary", ("False", "True"), "bool", "bool", {False, True}),
        ("binary", ("no", "yes"), "str", "str", {"no", "yes"}),
        ("multiclass", ("0", "2", "4"), None, "str", {"0", "2", "4"}),  # an older bundle: as before
    ],
)
def test_the_prediction_has_the_targets_type(
    tmp_path: Path, task: str, classes: tuple[str, ...], target_type: str | None, dtype: str, values: set
) -> None:
    prediction = predicted(tmp_path, classes, target_type, task)["prediction"]
    assert str(prediction.dtype) == dtype
    assert set(prediction) <= values


def test_a_bundle_without_the_target_type_loads(tmp_path: Path) -> None:
    """bundle.json written before `target_type` existed has no such key: it loads as None."""
    from tasks.train.bundle import DIGEST, load_bundle, meta_digest

    write_pets_bundle(tmp_path / "models", ("0", "2", "4"), "int")
    meta = json.loads((tmp_path / "models" / META).read_text())
    del meta["target_type"]
    meta[DIGEST]["meta"] = meta_digest(meta)
    (tmp_path / "models" / META).write_text(json.dumps(meta))
    assert load_bundle(tmp_path / "models")[1].target_type is None


def test_output_has_help_naming_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--help"])
    assert exited.value.code == 0
    usage = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "--output OUTPUT where to write the predictions" in usage
    assert "default: predictions/<input name>.parquet in the current directory" in usage


def test_without_output_it_writes_predictions_named_after_the_input(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not the project root: predictions/<input stem>.parquet (here refused, being a directory, which
    shows the path it chose without running a flow)."""
    (project / "predictions" / "new.parquet").mkdir(parents=True)
    line = _refused(["--input", "new.csv"], capsys)
    assert "predictions/new.parquet" in line and "the output is an existing directory" in line
    assert not (project / "predictions.parquet").exists()


@pytest.mark.slow
def test_an_integer_target_comes_back_as_integers_after_a_real_run(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stage flows carry the target's type from the CSV to the bundle (ingest's manifest, align's
    summary, train), and `fuseline predict` writes `PetID` and integer classes."""
    from flows.align import align_flow
    from flows.extract import extract
    from flows.ingest import ingest
    from flows.train import train

    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).normal(size=150)
    ids = [f"p{i:03d}" for i in range(150)]
    pd.DataFrame({"PetID": ids, "x": x, "AdoptionSpeed": np.digitize(x, [-0.5, 0.5]) * 2}).to_csv(
        "pets.csv", index=False
    )  # classes 0, 2 and 4, written as integers
    data = {
        "sources": [{"path": "pets.csv"}], "id": "PetID", "target": "AdoptionSpeed", "task": "multiclass",
        "columns": {"numeric": ["x"]}, "split": {"method": "hash"},
    }  # fmt: skip
    params = {"data": data, "train": {"epochs": 2, "device": "cpu", "ensemble": False}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    ingest(params_path="params.yaml")
    align_flow(params_path="params.yaml")
    extract(params_path="params.yaml", modality="tabular")
    train(params_path="params.yaml")
    assert json.loads((tmp_path / "models" / META).read_text())["target_type"] == "int"

    pd.DataFrame({"PetID": ids[:5], "x": x[:5]}).to_csv("new.csv", index=False)
    main(["predict", "--input", "new.csv"])
    assert capsys.readouterr().out.strip().endswith("5 predictions -> predictions/new.parquet")
    table = pd.read_parquet(tmp_path / "predictions" / "new.parquet")
    assert table["PetID"].tolist() == ids[:5]
    assert str(table["prediction"].dtype) == "int64" and set(table["prediction"]) <= {0, 2, 4}
