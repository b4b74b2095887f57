"""The fine-tuned image member through the real flows: extract (frozen features), train (the
member task, its bundle files), evaluate, and batch prediction from another image root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.tasks.evaluate.test_flow import _params as evaluation_params

pytestmark = pytest.mark.slow

ROWS = 80
COLOURS = {"no": (200, 50, 50), "yes": (50, 70, 210)}


def _params() -> dict:
    """evaluate/test_flow.py's project with a photo column instead of the text and category ones."""
    raw = evaluation_params()
    raw["data"]["columns"] = {"numeric": ["noise"], "image": ["photo"]}
    raw["encoders"] = {"image": {"image_size": 64, "finetune": {"blocks": 1, "epochs": 2, "batch_size": 32}}}
    raw["train"] = {**raw["train"], "epochs": 4, "batch_size": 32, "ensemble": False}
    return raw


def _write_project(workdir: Path) -> pd.DataFrame:
    """params.yaml, items.csv, images/, the aligned table and the tabular features; returns the items."""
    from tasks.atomic import write_json
    from tasks.config import params_from_dict
    from tasks.data.align import SPLIT, align
    from tasks.features.feature_store import write_blocks
    from tasks.features.tabular import fit_tabular, transform_tabular
    from tasks.paths import Layout

    rng = np.random.default_rng(0)
    labels = rng.choice(list(COLOURS), ROWS)
    (workdir / "images").mkdir()
    for row, label in enumerate(labels):
        pixels = np.clip(np.array(COLOURS[label]) + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(workdir / "images" / f"p{row:03d}.png")
    items = pd.DataFrame(
        {
            "item_id": [f"i{row:03d}" for row in range(ROWS)],
            "label": labels,
            "noise": rng.normal(size=ROWS),
            "photo": [f"p{row:03d}.png" for row in range(ROWS)],
        }
    )
    items.to_csv(workdir / "items.csv", index=False)
    (workdir / "params.yaml").write_text(yaml.safe_dump(_params(), sort_keys=False))
    params = params_from_dict(_params())
    frame = pd.read_csv(
        workdir / "items.csv", dtype={"item_id": "string", "label": "string", "photo": "string"}
    )
    layout = Layout(workdir)
    aligned, report = align(params.data, [("items.csv", frame)])
    layout.aligned_dir.mkdir(parents=True)
    aligned.to_parquet(layout.aligned, index=False)
    write_json({"rows": report.rows}, layout.align_summary)
    state = fit_tabular(aligned[aligned[SPLIT] == "train"], [], ["noise"])
    ids = aligned["row_id"].to_numpy(dtype=object)
    write_blocks(
        layout.feature_file("tabular"),
        ids,
        {"tabular": transform_tabular(aligned, state)},
        {"tabular": np.ones(len(ids), dtype=bool)},
        {"tabular_state": state.to_json()},
    )
    return items


def test_fine_tuned_image_member_is_trained_stored_evaluated_and_served(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.evaluate import evaluate
    from flows.extract import extract
    from flows.predict import predict
    from flows.train import train
    from tasks.train.finetuned_files import top_weights_name
    from tasks.train.plan import finetuned_kind

    FINETUNED_IMAGE = finetuned_kind("image")

    monkeypatch.chdir(tmp_path)
    items = _write_project(tmp_path)
    extract(params_path="params.yaml", modality="image")
    train(params_path="params.yaml")
    member = tmp_path / "models" / "members" / FINETUNED_IMAGE
    assert json.loads((member / "finetune.json").read_text())["blocks"] == 1
    assert (member / top_weights_name("image")).is_file()
    ensemble = json.loads((tmp_path / "models" / "ensemble.json").read_text())
    assert (
        ensemble["members"] == {FINETUNED_IMAGE: 1.0}
        and ensemble["kinds"][FINETUNED_IMAGE] == FINETUNED_IMAGE
    )

    report = evaluate(params_path="params.yaml")
    assert report["test"]["auc"] > 0.9  # the colour decides the label
    served = pd.read_parquet(tmp_path / "reports" / "test_predictions.parquet").sort_values("row_id")

    # New rows whose images live elsewhere (`--root image=...`) and are in no cache: the member
    # must open them under the override root.
    moved = shutil.move(tmp_path / "images", tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / ".cache" / "features" / "hidden")
    test_rows = items[items["item_id"].isin(set(served["row_id"]))]
    test_rows.to_csv(tmp_path / "new.csv", index=False)
    predict("models", "new.csv", "preds.parquet", "params.yaml", roots={"image": str(moved)})
    ours = pd.read_parquet(tmp_path / "preds.parquet").sort_values("item_id")  # the data's id name
    np.testing.assert_allclose(ours["prob_yes"].to_numpy(), served["prob_yes"].to_numpy(), atol=1e-5)
    assert list((tmp_path / ".cache" / "features" / "hidden").rglob("*.npy"))  # recomputed from the files
