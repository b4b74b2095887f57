"""A tfidf project through the real flows: extract (fit on train rows), train (state copied into the
bundle), and batch prediction that needs neither data/features nor the feature cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO
from tests.tasks.features.test_tfidf import _frame, _raw

pytestmark = pytest.mark.slow


def _write_project(workdir: Path) -> pd.DataFrame:
    """params.yaml, items.csv and the aligned table, as the params, ingest and align stages would."""
    from tasks.atomic import write_json
    from tasks.config import params_from_dict
    from tasks.data.align import align
    from tasks.paths import Layout

    raw = _raw()
    raw["train"] = {**raw["train"], "epochs": 4}
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    items = _frame()
    items.to_csv(workdir / "items.csv", index=False)
    layout = Layout(workdir)
    aligned, report = align(params_from_dict(raw).data, [("items.csv", items)])
    layout.aligned_dir.mkdir(parents=True)
    aligned.to_parquet(layout.aligned, index=False)
    write_json({"rows": report.rows}, layout.align_summary)
    return items


@pytest.fixture(scope="module")
def project(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A trained tfidf project; returns the project directory and the new rows to predict."""
    from flows.extract import extract
    from flows.train import train

    workdir = tmp_path_factory.mktemp("tfidf")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        items = _write_project(workdir)
        extract(params_path="params.yaml")
        train(params_path="params.yaml")
    new = items.iloc[:30].copy()
    new["item_id"] = [f"new{i}" for i in range(len(new))]
    new.loc[new.index[:10], "note"] = "good unseenword another unseen phrase"  # words no fit has seen
    return workdir, new.drop(columns=["label"])


def test_extract_writes_the_fitted_state_for_text_and_a_note_for_the_others(
    project: tuple[Path, pd.DataFrame],
) -> None:
    workdir, _ = project
    features = workdir / "data" / "features"
    assert sorted(p.name for p in (features / "text.fitted").iterdir()) == ["tfidf.json", "tfidf.safetensors"]
    for modality in ("tabular", "image", "audio"):
        assert json.loads((features / f"{modality}.fitted" / "none.json").read_text())["fitted"] is None


def test_the_bundle_holds_its_own_copy_of_the_state(project: tuple[Path, pd.DataFrame]) -> None:
    workdir, _ = project
    record = json.loads((workdir / "models" / "bundle.json").read_text())["encoders"]["text"]
    assert record["state"]["dir"] == "fitted/text" and record["model_id"] == "tfidf"
    copy = workdir / "models" / "fitted" / "text"
    assert {name: (copy / name).read_bytes() for name in record["state"]["files"]} == {
        name: (workdir / "data" / "features" / "text.fitted" / name).read_bytes()
        for name in record["state"]["files"]
    }
    baseline = json.loads((workdir / "models" / "baselines" / "text" / "bundle.json").read_text())
    assert (
        workdir / "models" / "baselines" / "text" / baseline["encoders"]["text"]["state"]["dir"]
    ).resolve() == (copy.resolve())


def test_prediction_uses_the_bundle_copy_when_features_and_cache_are_gone(
    project: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.predict import predict
    from tasks.device import pick_device
    from tasks.features.cache import FeatureCache
    from tasks.serve.predict import file_roots, load_predictor, read_new_rows

    source, new = project
    workdir = shutil.copytree(source, tmp_path / "project")  # deleting parts of it is this test's business
    monkeypatch.chdir(workdir)
    new.to_csv(workdir / "new.csv", index=False)
    predict("models", "new.csv", "warm.parquet", "params.yaml")  # texts of known rows come from the cache

    shutil.rmtree(workdir / "data" / "features")
    shutil.rmtree(workdir / ".cache")
    predict("models", "new.csv", "cold.parquet", "params.yaml")
    warm, cold = pd.read_parquet(workdir / "warm.parquet"), pd.read_parquet(workdir / "cold.parquet")
    assert list(cold["item_id"]) == list(new["item_id"])
    np.testing.assert_allclose(cold["prob_yes"], warm["prob_yes"], atol=1e-6, rtol=0)

    shutil.rmtree(workdir / ".cache")
    predictor = load_predictor(workdir / "models", FeatureCache(workdir / ".cache" / "features"))
    assert Path(predictor.specs["text"].model) == (workdir / "models" / "fitted" / "text").resolve()
    rows = read_new_rows(workdir / "new.csv", predictor.data, file_roots(predictor.data))
    fresh = predictor.predict(
        rows, file_roots(predictor.data), FeatureCache(workdir / ".cache2"), pick_device("cpu")
    )
    np.testing.assert_allclose(fresh["prob_yes"], warm["prob_yes"], atol=1e-6, rtol=0)


def test_a_bundle_whose_state_was_edited_is_refused(
    project: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    from tasks.errors import BundleError
    from tasks.features.cache import FeatureCache
    from tasks.serve.predict import load_predictor

    source, _ = project
    models = shutil.copytree(source / "models", tmp_path / "models")
    state = models / "fitted" / "text" / "tfidf.json"
    info = json.loads(state.read_text())
    info["vocabulary"][0], info["vocabulary"][1] = info["vocabulary"][1], info["vocabulary"][0]
    state.write_text(json.dumps(info))
    with pytest.raises(BundleError, match="fitted text encoder's files are missing or changed"):
        load_predictor(models, FeatureCache(tmp_path / "cache"))


def test_the_monitor_embeds_through_the_bundle_copy_or_else_the_extract_out(
    project: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    from tasks.config import load_params
    from tasks.device import pick_device
    from tasks.errors import DataError
    from tasks.features.cache import FeatureCache
    from tasks.monitor.embeddings import embed_rows, encoder_specs
    from tasks.paths import Layout
    from tasks.serve.predict import load_predictor, read_new_rows

    source, new = project
    params = load_params(source / "params.yaml")
    without_model = encoder_specs(params.encoders, params.data, Layout(source))
    assert Path(without_model["text"].model) == (source / "data" / "features" / "text.fitted").resolve()
    with pytest.raises(DataError, match="holds no fitted state"):
        encoder_specs(params.encoders, params.data, Layout(tmp_path))  # no extract out there

    cache = FeatureCache(tmp_path / "cache")
    predictor = load_predictor(source / "models", cache)
    specs = (
        encoder_specs(params.encoders, params.data, Layout(tmp_path), exclude=predictor.specs)
        | predictor.specs
    )
    new.to_csv(tmp_path / "new.csv", index=False)
    rows = read_new_rows(tmp_path / "new.csv", predictor.data, {})
    blocks = embed_rows(rows, params.data, specs, {}, cache, pick_device("cpu"))
    vectors, present = blocks["text.note"]
    assert vectors.shape == (len(new), 16) and present.all() and np.abs(vectors).sum(axis=1).min() > 0


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_the_command_line_writes_a_modality_without_columns_without_prefect_or_an_encoder(
    project: tuple[Path, pd.DataFrame], modality: str, tmp_path: Path
) -> None:
    """`python -m flows.extract --modality M` takes the short path and writes what the flow wrote."""
    import os
    import subprocess
    import sys

    workdir, _ = project
    features = workdir / "data" / "features"
    by_flow = pd.read_parquet(features / f"{modality}.parquet")
    note = (features / f"{modality}.fitted" / "none.json").read_bytes()
    shutil.copytree(workdir, tmp_path / "copy")
    copy = tmp_path / "copy" / "data" / "features"
    (copy / f"{modality}.parquet").unlink()
    shutil.rmtree(copy / f"{modality}.fitted")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "flows.extract", "--modality", modality],
        cwd=tmp_path / "copy",
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"no {modality} columns" in done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "prefect" not in imported and "tasks.features.extract" not in imported
    pd.testing.assert_frame_equal(pd.read_parquet(copy / f"{modality}.parquet"), by_flow)
    assert list(by_flow.columns) == ["row_id"]
    assert (copy / f"{modality}.fitted" / "none.json").read_bytes() == note
