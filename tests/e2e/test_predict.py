"""Batch prediction with the bundle the shared reproduced project trained (tests/e2e/conftest.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.errors import BundleError, DataError
from tasks.features.cache import FeatureCache
from tasks.features.tabular import TabularState
from tasks.serve.predict import load_predictor, read_new_rows
from tasks.train.bundle import meta_digest
from tests.e2e.conftest import raw_demo_rows, run_ok

pytestmark = pytest.mark.slow

Repo = tuple[Path, dict[str, str]]


@pytest.fixture()
def in_repo(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in the project root: the cache and image paths in params.yaml are relative to it."""
    root, _ = repo
    monkeypatch.chdir(root)
    return root


def test_batch_prediction_equals_evaluate_on_the_test_rows(in_repo: Path, tmp_path: Path) -> None:
    from flows.predict import predict

    rows = raw_demo_rows(in_repo, "test")
    rows.to_csv(tmp_path / "new.csv", index=False)
    summary = predict("models", str(tmp_path / "new.csv"), str(tmp_path / "preds.parquet"), "params.yaml")
    ours = _as_evaluate_writes(pd.read_parquet(tmp_path / "preds.parquet"))
    ours = ours.sort_values("row_id").reset_index(drop=True)
    theirs = pd.read_parquet(in_repo / "reports" / "test_predictions.parquet")
    theirs = theirs.sort_values("row_id").reset_index(drop=True)
    assert summary["rows"] == len(rows) == len(theirs)
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True)


def test_bundle_refuses_an_encoder_with_another_fingerprint(in_repo: Path, tmp_path: Path) -> None:
    bundle = shutil.copytree(in_repo / "models", tmp_path / "models")
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["encoders"]["text"]["weights_digest"] = "0" * 16
    meta["digest"]["meta"] = meta_digest(meta)  # as if trained with other weights, not edited
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"text encoder .*weights_digest: bundle '0000000000000000'"):
        load_predictor(bundle, FeatureCache(in_repo / ".cache" / "features"))


def test_bundle_records_the_precision_its_features_were_encoded_at(in_repo: Path) -> None:
    from tasks.features.feature_store import read_blocks

    meta = json.loads((in_repo / "models" / "bundle.json").read_text())
    expected = "bfloat16-autocast" if torch.cuda.is_available() else "float32"
    for kind in ("text", "image", "audio"):
        assert meta["encoders"][kind]["precision"] == expected, kind
        assert read_blocks(in_repo / "data" / "features" / f"{kind}.parquet")[3]["precision"] == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine can repeat bf16 autocast")
def test_a_bundle_of_bf16_features_refuses_to_encode_in_float32(in_repo: Path, tmp_path: Path) -> None:
    """Before the precision was recorded, prediction on CPU silently fed float32 vectors to a model
    trained on bf16 ones (extract ran on train.device, predict on `auto`)."""
    bundle = shutil.copytree(in_repo / "models", tmp_path / "models")
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["encoders"]["image"]["precision"] = "bfloat16-autocast"
    meta["digest"]["meta"] = meta_digest(meta)  # as if extract had run on a GPU
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"image features encoded at bfloat16-autocast, which this machine"):
        load_predictor(bundle, FeatureCache(in_repo / ".cache" / "features"))


def test_unseen_category_lands_in_the_unknown_slot(in_repo: Path, tmp_path: Path) -> None:
    predictor = load_predictor(in_repo / "models", FeatureCache(in_repo / ".cache" / "features"))
    rows = raw_demo_rows(in_repo).head(2).assign(category="a-category-never-seen")
    rows.to_csv(tmp_path / "new.csv", index=False)
    roots = {"image": in_repo / predictor.data.image_root}
    table = read_new_rows(tmp_path / "new.csv", predictor.data, roots)
    features = predictor.features(table, roots, _cache(in_repo), _cpu())
    names = TabularState.from_json(predictor.meta.tabular).feature_names()
    assert features.inputs["tabular"][:, names.index("category=<unknown>")].tolist() == [1.0, 1.0]


def test_missing_text_and_undecodable_image_become_absent_not_errors(in_repo: Path, tmp_path: Path) -> None:
    predictor = load_predictor(in_repo / "models", FeatureCache(in_repo / ".cache" / "features"))
    rows = raw_demo_rows(in_repo).head(3).copy()
    images = tmp_path / "images"
    images.mkdir()
    for photo in rows["photo"]:
        (images / photo).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(in_repo / predictor.data.image_root / photo, images / photo)
    rows.iloc[0, rows.columns.get_loc("title")] = ""
    (images / rows["photo"].iloc[1]).write_bytes(b"\xff\xd8 not really a jpeg")
    rows.to_csv(tmp_path / "new.csv", index=False)
    table = read_new_rows(tmp_path / "new.csv", predictor.data, {"image": images})
    features = predictor.features(table, {"image": images}, _cache(in_repo), _cpu())
    assert features.present["text.title"].tolist() == [False, True, True]
    assert features.present["image.photo"].tolist() == [True, False, True]
    assert len(predictor.predict(table, {"image": images}, _cache(in_repo), _cpu())) == 3


def test_missing_column_is_a_data_error_naming_file_and_column(in_repo: Path, tmp_path: Path) -> None:
    predictor = load_predictor(in_repo / "models", FeatureCache(in_repo / ".cache" / "features"))
    raw_demo_rows(in_repo).head(3).drop(columns=["price"]).to_csv(tmp_path / "new.csv", index=False)
    with pytest.raises(DataError, match=r"file .*new\.csv; column 'price'"):
        read_new_rows(tmp_path / "new.csv", predictor.data, {"image": in_repo / predictor.data.image_root})


def test_predictions_keep_the_input_row_order(in_repo: Path, tmp_path: Path) -> None:
    from flows.predict import predict

    rows = raw_demo_rows(in_repo).head(40).iloc[::-1]
    rows.to_csv(tmp_path / "new.csv", index=False)
    predict("models", str(tmp_path / "new.csv"), str(tmp_path / "preds.parquet"), None)
    ours = pd.read_parquet(tmp_path / "preds.parquet")
    assert ours["item_id"].tolist() == rows["item_id"].tolist()  # the id column as the data names it
    assert np.isfinite(ours.filter(like="prob_").to_numpy()).all()


def _as_evaluate_writes(ours: pd.DataFrame) -> pd.DataFrame:
    """Prediction output as evaluate's test_predictions.parquet has it: `row_id`, labels as text.

    `fuseline predict` names the id column as the data does (`item_id`) and gives labels the
    target's type (the demo's 0/1 are integers); evaluate's table keeps its own schema.
    """
    return ours.rename(columns={"item_id": "row_id"}).astype({"prediction": str})


def _cache(root: Path) -> FeatureCache:
    return FeatureCache(root / ".cache" / "features")


def _cpu() -> torch.device:
    return torch.device("cpu")


def _predict_command(rows: Path) -> list[str]:
    """`fuseline predict --model models --input <rows>`, run as the CLI module (add --output)."""
    return [sys.executable, "-m", "flows.cli", "predict", "--model", "models", "--input", str(rows)]


def test_fuseline_predict_command_writes_the_output(repo: Repo, tmp_path: Path) -> None:
    root, env = repo
    raw_demo_rows(root).head(5).to_csv(tmp_path / "new.csv", index=False)
    output = tmp_path / "out" / "preds.parquet"
    command = _predict_command(tmp_path / "new.csv")
    result = run_ok([*command, "--output", str(output)], root, env)
    assert f"5 predictions -> {output}" in result.stdout
    assert len(pd.read_parquet(output)) == 5


def test_fuseline_predict_refuses_to_overwrite_what_it_reads(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11: `--output` equal to the input, inside the bundle, or a directory is one line, exit 2.

    The command runs once (a process start is most of its cost); the other two outputs go
    through the check it makes before any work, on the same project."""
    from flows.predict import check_predict_paths
    from tasks.errors import DataError

    root, env = repo
    raw_demo_rows(root).head(5).to_csv(tmp_path / "new.csv", index=False)
    kept = {path: path.read_bytes() for path in (tmp_path / "new.csv", root / "models" / "bundle.json")}
    command = _predict_command(tmp_path / "new.csv")
    result = subprocess.run(
        [*command, "--output", str(tmp_path / "new.csv")], cwd=root, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1].startswith("fuseline: ") and "Traceback" not in result.stderr
    monkeypatch.chdir(root)
    for output, why in (("models/bundle.json", "is inside models"), (str(tmp_path), "existing directory")):
        with pytest.raises(DataError, match=why):
            check_predict_paths("models", str(tmp_path / "new.csv"), output, "params.yaml")
    assert {path: path.read_bytes() for path in kept} == kept


def test_a_wide_deep_bundle_predicts_from_raw_rows_as_from_its_features(
    in_repo: Path, tmp_path: Path
) -> None:
    """wide_deep reads hashed id blocks; prediction rebuilds them from the bundle's wide state."""
    import yaml

    from flows.predict import predict
    from flows.train import bundle_meta
    from tasks.config import params_from_dict
    from tasks.evaluate.evaluation import predictions_table
    from tasks.paths import Layout
    from tasks.train.assemble import feature_metadata, load_feature_set
    from tasks.train.bundle import load_bundle, predict_with, write_bundle
    from tasks.train.training import train_model

    raw = yaml.safe_load((in_repo / "params.yaml").read_text())
    raw["fusion"] = {**raw["fusion"], "head": "wide_deep"}
    raw["train"] = {**raw["train"], "epochs": 2}
    params = params_from_dict(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    features = load_feature_set(Layout(), params.data.task)
    result = train_model(features, params.data.task, params.fusion, params.train, progress=False)
    meta = bundle_meta(result, params, features, feature_metadata(Layout()))
    assert meta.wide is not None and any(block.endswith("__wide__") for block in meta.in_dims)
    write_bundle(tmp_path / "wide_deep", result.model, meta)

    rows = raw_demo_rows(in_repo, "test")
    rows.to_csv(tmp_path / "new.csv", index=False)
    predict(str(tmp_path / "wide_deep"), str(tmp_path / "new.csv"), str(tmp_path / "preds.parquet"),
            str(tmp_path / "params.yaml"))  # fmt: skip
    ours = _as_evaluate_writes(pd.read_parquet(tmp_path / "preds.parquet"))
    ours = ours.sort_values("row_id").reset_index(drop=True)
    model, loaded = load_bundle(tmp_path / "wide_deep")
    test = features.of_split("test")
    theirs = predictions_table(loaded.task, test, predict_with(model, loaded, test))
    theirs = theirs.sort_values("row_id").reset_index(drop=True)
    assert len(ours) == len(rows)
    pd.testing.assert_frame_equal(ours, theirs, check_exact=False, atol=1e-6, rtol=0)
