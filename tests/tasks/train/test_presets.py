"""Presets and the time budget: which members train runs, and how a time limit stops them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tasks.config import params_from_dict
from tasks.errors import ConfigError
from tasks.train.plan import Budget, finetuned_kind, member_plan
from tests.tasks.evaluate.test_flow import _params, _write_inputs

FINETUNED_TEXT, FINETUNED_IMAGE = finetuned_kind("text"), finetuned_kind("image")


def _with(**train: object) -> dict:
    raw = _params()
    raw["train"] = {**raw["train"], **train}
    return raw


def test_fast_trains_the_fused_head_and_one_per_modality() -> None:
    plan = member_plan(params_from_dict(_with()), ["tabular", "text"])
    assert [m.name for m in plan] == ["fused", "tabular", "text", "boosted"]
    assert plan[1].modalities == ("tabular",) and plan[0].modalities is None


def test_best_adds_seeds_heads_and_fine_tuning_cheapest_first() -> None:
    plan = member_plan(params_from_dict(_with(preset="best")), ["tabular", "text"])
    names = [m.name for m in plan]
    assert names[:3] == ["fused", "tabular", "text"] and names[-1] == FINETUNED_TEXT
    seeds = {m.train.seed for m in plan if m.fusion.head == "concat" and m.modalities is None}
    assert len(seeds) >= 3  # the fused head with three different seeds
    assert {"head_gated", "head_attention"} <= set(names)
    assert (plan[-1].tuned, plan[-1].finetune_depth) == ("text", 2)
    # no text column, nothing to fine-tune
    assert FINETUNED_TEXT not in [
        m.name for m in member_plan(params_from_dict(_with(preset="best")), ["tabular"])
    ]


def test_fine_tuning_asked_for_under_fast_is_trained_too() -> None:
    raw = _with()
    raw["encoders"] = {"text": {"finetune": {"layers": 1}}}
    plan = member_plan(params_from_dict(raw), ["tabular", "text"])
    assert plan[-1].name == FINETUNED_TEXT and plan[-1].finetune_depth == 1


def test_best_fine_tunes_the_last_image_block_first_then_the_text_layers() -> None:
    plan = member_plan(params_from_dict(_with(preset="best")), ["image", "tabular", "text"])
    assert [m.name for m in plan][-2:] == [FINETUNED_IMAGE, FINETUNED_TEXT]  # cheapest first
    assert (plan[-2].kind, plan[-2].tuned, plan[-2].finetune_depth) == (FINETUNED_IMAGE, "image", 1)
    without_images = member_plan(params_from_dict(_with(preset="best")), ["tabular", "text"])
    assert FINETUNED_IMAGE not in [m.name for m in without_images]


def test_image_fine_tuning_asked_for_under_fast_is_trained_too() -> None:
    raw = _with()
    raw["encoders"] = {"image": {"finetune": {"blocks": 2}}}
    plan = member_plan(params_from_dict(raw), ["image", "tabular"])
    assert plan[-1].name == FINETUNED_IMAGE and plan[-1].finetune_depth == 2


def test_best_leaves_an_image_encoder_it_cannot_split_frozen() -> None:
    raw = _with(preset="best")
    raw["encoders"] = {"image": {"model": "convnext_tiny"}}  # no EfficientNet or ResNet blocks
    assert FINETUNED_IMAGE not in [m.name for m in member_plan(params_from_dict(raw), ["image", "text"])]


def test_budget() -> None:
    assert not Budget.start(None).exhausted() and Budget.start(None).left() is None
    budget = Budget.start(0.05)
    assert not budget.exhausted()
    time.sleep(0.06)
    assert budget.exhausted() and budget.left() == 0.0


@pytest.mark.slow
def test_a_spent_time_limit_still_leaves_a_working_model(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused head always trains (stopped after its first epoch), the rest is skipped and said so."""
    from flows.evaluate import evaluate
    from flows.train import train

    monkeypatch.chdir(tmp_path)
    _write_inputs(tmp_path)
    raw = _with(preset="best", time_limit=0.001)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    train(params_path="params.yaml")
    ensemble = json.loads((tmp_path / "models" / "ensemble.json").read_text())
    status = {t["name"]: t["status"] for t in ensemble["tried"]}
    assert status["fused"] == "trained" and status["sklearn_linear"] == "trained"
    skipped = {name for name, s in status.items() if s.startswith("skipped")}
    assert {"tabular", "text", "head_gated", FINETUNED_TEXT} <= skipped
    assert set(ensemble["members"]) <= {"fused", "sklearn_linear"}
    curve = (tmp_path / "reports" / "train" / "learning_curve.csv").read_text().splitlines()
    assert len(curve) == 2  # header + the one epoch the deadline allowed
    report = evaluate(params_path="params.yaml")
    assert report["test"]["auc"] > 0.7  # the planted signal is still learned by what did train


@pytest.mark.slow
def test_a_fine_tuned_text_member_is_trained_stored_and_served(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """encoders.text.finetune.layers: 1 and no ensemble: a real MiniLM top layer trains with the
    head, goes into the bundle as safetensors, and is the model evaluate reports and loading serves."""
    import numpy as np
    import pandas as pd

    from flows.evaluate import evaluate
    from flows.train import train
    from tasks.errors import BundleError
    from tasks.train.finetuned_files import FINETUNE_META, top_weights_name
    from tasks.train.finetuned_member import member_loaders
    from tasks.train.members import load_final_model

    top_weights = top_weights_name("text")
    monkeypatch.chdir(tmp_path)
    _write_inputs(tmp_path)
    raw = _with(ensemble=False)
    raw["encoders"] = {"text": {"max_length": 16, "finetune": {"layers": 1, "epochs": 2, "batch_size": 64}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    train(params_path="params.yaml")
    member = tmp_path / "models" / "members" / FINETUNED_TEXT
    info = json.loads((member / FINETUNE_META).read_text())
    assert info["layers"] == 1 and info["columns"] == ["note"]
    ensemble = json.loads((tmp_path / "models" / "ensemble.json").read_text())
    assert ensemble["members"] == {FINETUNED_TEXT: 1.0}
    tried = {t["name"]: t for t in ensemble["tried"]}
    assert tried[FINETUNED_TEXT]["status"] == "trained" and "val" in tried[FINETUNED_TEXT]
    assert list((tmp_path / ".cache" / "features" / "hidden").rglob("*.npy"))  # the lower layers, cached

    report = evaluate(params_path="params.yaml")
    served = pd.read_parquet(tmp_path / "reports" / "test_predictions.parquet")
    final = load_final_model(tmp_path / "models", loaders=member_loaders(".cache/features"))
    from flows.evaluate import rows_of
    from tasks.paths import Layout
    from tasks.train.assemble import load_feature_set

    test = load_feature_set(Layout(), "binary").of_split("test")
    predicted = final.predict(test, rows_of(pd.read_parquet(Layout().aligned), test))
    assert predicted.shape == (len(test.ids),) and report["test"]["auc"] > 0.7
    np.testing.assert_allclose(predicted, served["prob_yes"].to_numpy(), atol=1e-6)

    (member / top_weights).write_bytes((member / top_weights).read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(BundleError, match="digest"):
        member_loaders(".cache/features")[FINETUNED_TEXT](member)


def test_a_chosen_metric_selects_the_members_and_the_bundle_records_it(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate.metric: log_loss picks each head's epoch, scores the members and chooses the ensemble."""
    import pandas as pd

    from flows.train import train

    monkeypatch.chdir(tmp_path)
    _write_inputs(tmp_path)
    raw = _with(epochs=4, patience=4)
    raw["evaluate"] = {"metric": "log_loss"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    train(params_path="params.yaml")
    ensemble = json.loads((tmp_path / "models" / "ensemble.json").read_text())
    assert ensemble["selected_by"] == "val log_loss"
    assert ensemble["member_val"]["fused"] == next(
        t["val"] for t in ensemble["tried"] if t["name"] == "fused"
    )
    assert json.loads((tmp_path / "models" / "bundle.json").read_text())["metric"] == "log_loss"
    curve = pd.read_csv(tmp_path / "reports" / "train" / "learning_curve.csv")
    best = json.loads((tmp_path / "models" / "bundle.json").read_text())["best_epoch"]
    assert best == int(curve.sort_values(["val_log_loss", "val_loss"]).iloc[0]["epoch"])


def test_quadratic_kappa_on_classes_without_an_order_is_refused_naming_the_key() -> None:
    from flows.train import check_metric_classes

    raw = _with()
    raw["data"]["task"] = "multiclass"
    raw["evaluate"] = {"metric": "quadratic_kappa"}
    params = params_from_dict(raw)
    check_metric_classes(params, ("0", "1", "2"))  # numbers: ordered
    with pytest.raises(
        ConfigError, match=r"^params.yaml: evaluate.metric: quadratic_kappa needs ordered classes"
    ):
        check_metric_classes(params, ("cat", "dog", "fish"))
