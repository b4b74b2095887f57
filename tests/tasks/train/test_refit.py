"""Refit (tasks/train/refit.py): after the selection, the kept members learn the val rows too,
for the epochs, rounds or strength val chose for them.

Each kind is checked two ways: refit on the train rows alone gives back exactly the model
train kept (so the refit reproduces the selected fit and nothing else), and refit on train +
val gives another model (so the val rows are really learned from).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.config import FusionConfig, TrainConfig, params_from_dict
from tasks.data.align import SPLIT
from tasks.scores.model_names import FUSED, FUSED_HEAD
from tasks.train.boosted import fit_boosted, refit_boosted
from tasks.train.dataset import FeatureSet
from tasks.train.finetuned_member import FinetunedResult
from tasks.train.plan import BOOSTED, Budget, MemberSpec, Skipped
from tasks.train.refit import (
    LinearFit,
    RefitReserve,
    refit_growth,
    refit_members,
    refit_seconds,
    val_before_refit,
)
from tasks.train.sklearn_baseline import predict_linear, refit_linear_member, tune_linear_member
from tasks.train.training import TrainResult, predict, refit_model, train_model
from tests.tasks.train.test_boosted import COLUMNS, _prepare
from tests.tasks.train.test_sklearn_baseline import COLUMNS as LINEAR_COLUMNS
from tests.tasks.train.test_sklearn_baseline import MULTICLASS_ORDER, aligned_table

FUSION = FusionConfig.model_validate({"head": "concat", "hidden": 16, "dropout": 0.0})
TRAIN = TrainConfig(epochs=12, patience=3, batch_size=64, lr=0.01)

Prepared = tuple[FeatureSet, pd.DataFrame]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return _prepare(tmp_path_factory.mktemp("refit"), "binary")


def _without_val(features: FeatureSet, rows: pd.DataFrame) -> Prepared:
    keep = features.split != "val"
    return features.rows(keep), rows[keep].reset_index(drop=True)


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def test_a_refit_head_is_the_kept_fit_plus_the_val_rows(prepared: Prepared) -> None:
    features, rows = prepared
    kept = train_model(features, "binary", FUSION, TRAIN, progress=False)
    assert 1 <= kept.best_epoch < len(kept.history)  # early stopping chose an epoch: the case refit is for
    alone = refit_model(_without_val(features, rows)[0], "binary", FUSION, TRAIN, kept.best_epoch, False)
    assert len(alone.history) == kept.best_epoch
    for ours, theirs in zip(_weights(alone.model), _weights(kept.model), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)

    pooled = refit_model(features, "binary", FUSION, TRAIN, kept.best_epoch, False)
    again = refit_model(features, "binary", FUSION, TRAIN, kept.best_epoch, False)
    for ours, theirs in zip(_weights(pooled.model), _weights(again.model), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # seeded: the same bytes every run
    val = features.of_split("val")
    moved = predict(pooled.model, val, "binary", None) - predict(kept.model, val, "binary", None)
    assert np.abs(moved).max() > 1e-3


def test_a_refit_booster_is_the_kept_fit_plus_the_val_rows(prepared: Prepared) -> None:
    features, rows = prepared
    kept = fit_boosted(features, rows, COLUMNS, "binary", "auc", seed=0).model
    alone = refit_boosted(kept, *_without_val(features, rows))
    np.testing.assert_allclose(
        alone.predict(features, rows), kept.predict(features, rows), rtol=0, atol=1e-12
    )

    pooled = refit_boosted(kept, features, rows)
    rounds = [bag["best_round"] for bag in kept.info["bags"]]
    assert [b.current_iteration() for b in pooled.boosters] == rounds
    assert pooled.info["refit"] == {"rows": int((features.split != "test").sum())}
    assert not np.allclose(pooled.predict(features, rows), kept.predict(features, rows))


def test_a_refit_linear_member_is_the_kept_fit_plus_the_val_rows() -> None:
    aligned = aligned_table("multiclass")
    strength, kept = tune_linear_member(aligned, LINEAR_COLUMNS, "multiclass", MULTICLASS_ORDER)
    train_only = aligned[aligned[SPLIT] != "val"]
    alone = refit_linear_member(train_only, LINEAR_COLUMNS, "multiclass", strength, MULTICLASS_ORDER)
    np.testing.assert_allclose(predict_linear(alone, aligned), predict_linear(kept, aligned), atol=1e-9)

    pooled = refit_linear_member(aligned, LINEAR_COLUMNS, "multiclass", strength, MULTICLASS_ORDER)
    assert not np.allclose(predict_linear(pooled, aligned), predict_linear(kept, aligned), atol=1e-4)


def _params(tmp_path: Path):  # noqa: ANN202 - Params
    data = {"sources": [{"path": "items.csv"}], "id": "item_id", "target": "label", "task": "binary",
            "columns": COLUMNS.model_dump(), "demo": None}  # fmt: skip
    return params_from_dict({"data": data})


def test_only_the_kept_members_are_refit_and_a_spent_budget_keeps_them_saying_why(
    prepared: Prepared, tmp_path: Path
) -> None:
    features, rows = prepared
    params = _params(tmp_path)
    head = train_model(features, "binary", FUSION, TRAIN, progress=False)
    text = train_model(features.only_modalities({"text"}), "binary", FUSION, TRAIN, progress=False)
    boosted = fit_boosted(features, rows, COLUMNS, "binary", "auc", seed=0)
    strength, linear = tune_linear_member(rows, COLUMNS, "binary", features.classes)
    trained = {
        FUSED: (MemberSpec(FUSED, "head", FUSION, TRAIN), head),
        "text": (MemberSpec("text", "head", FUSION, TRAIN, modalities=("text",)), text),
        BOOSTED: (MemberSpec(BOOSTED, BOOSTED, FUSION, TRAIN), boosted),
    }
    kept_linear = LinearFit(linear, strength, 0.1)
    chosen = [FUSED, BOOSTED, "sklearn_linear"]

    out = refit_members(chosen, trained, kept_linear, features, rows, params, Budget(None))
    assert out.record == {"rows": int((features.split != "test").sum()),
                          "members": [BOOSTED, FUSED, "sklearn_linear"]}  # fmt: skip
    assert out.fitted_splits == ("train", "val")
    assert out.trained["text"][1] is text  # left out of the ensemble: nothing serves it
    refit_head = out.trained[FUSED][1]
    assert refit_head.model is not head.model
    assert (refit_head.history, refit_head.best_epoch) == (head.history, head.best_epoch)  # val's record
    assert out.trained[BOOSTED][1].model.info["refit"]["rows"] == out.record["rows"]
    assert out.linear is not None and out.linear.model is not linear

    spent = refit_members(chosen, trained, kept_linear, features, rows, params, Budget(time.time() - 1))
    assert spent.record["members"] == [] and spent.fitted_splits == ("train",)
    assert set(spent.record["kept"]) == set(chosen)
    assert all(why.startswith("train.time_limit: refit needs about") for why in spent.record["kept"].values())
    assert spent.trained[FUSED][1] is head and spent.linear is kept_linear


def test_each_member_keeps_back_what_refitting_those_before_it_would_take(prepared: Prepared) -> None:
    """The reserve grows by each trained member's refit cost: the share of its fit up to the
    kept epoch or rounds, on train + val's rows; what is never refit costs nothing."""
    features, rows = prepared
    growth = refit_growth(features)
    assert growth == (features.split != "test").sum() / (features.split == "train").sum() > 1
    head = TrainResult(torch.nn.Linear(1, 1), {}, 1, None, [{}] * 10, best_epoch=4, train_seconds=10.0)
    boosted = fit_boosted(features, rows, COLUMNS, "binary", "auc", seed=0)
    bags = boosted.model.info["bags"]
    kept_rounds = sum(b["best_round"] for b in bags) / sum(b["rounds"] for b in bags)
    assert 0 < kept_rounds < 1  # early stopping kept fewer rounds than it boosted
    tuned = FinetunedResult(torch.nn.Linear(1, 1), {}, 1, None, [{}] * 3, best_epoch=1, train_seconds=50.0)
    budget = Budget(time.time() + 600)

    reserve = RefitReserve(budget, growth)
    reserve.add(LinearFit(None, 1.0, 0.9))  # type: ignore[arg-type] - its model is not read
    reserve.add(head)
    reserve.add(boosted)
    for never_refit in (tuned, Skipped("train.time_limit"), None):
        reserve.add(never_refit)
    expected = (0.9 / 3 + 10.0 * 4 / 10 + boosted.train_seconds * kept_rounds) * growth
    assert reserve.seconds == pytest.approx(expected)
    assert reserve.members_budget().deadline == pytest.approx(budget.deadline - expected)
    assert refit_seconds(boosted, growth) == pytest.approx(boosted.train_seconds * kept_rounds * growth)
    assert RefitReserve(Budget(None), growth, 1e6).members_budget() == Budget(None)  # no limit, no reserve


def test_members_one_after_another_are_given_the_budget_less_the_reserve(
    prefect_api: str, prepared: Prepared, tmp_path: Path
) -> None:
    """A reserve as long as the time left: the required fused head is trained, the next member
    finds its time already spent; without the reserve both are trained."""
    from flows._runtime import Unstored
    from flows.train import train_members

    features, _ = prepared
    params = _params(tmp_path)
    specs = [MemberSpec(FUSED, "head", FUSION, TRAIN),
             MemberSpec("text", "head", FUSION, TRAIN, modalities=("text",))]  # fmt: skip
    budget = Budget(time.time() + 600)
    full = RefitReserve(budget, refit_growth(features), 600.0)
    reserved = train_members(specs, Unstored(features), params, budget, "", full)
    assert isinstance(reserved[0], TrainResult) and reserved[1] == Skipped("train.time_limit")
    free = train_members(specs, Unstored(features), params, budget, "", RefitReserve(budget, 1.0))
    assert all(isinstance(result, TrainResult) for result in free)


def test_evaluate_reports_the_val_scores_measured_before_the_refit() -> None:
    ensemble = {
        "members": {FUSED: 0.6, "boosted": 0.4},
        "val": 0.91,
        "tried": [
            {"name": FUSED, "val": 0.88},
            {"name": "boosted", "val": 0.86},
            {"name": "text", "val": 0.7},
        ],
        "refit": {"rows": 850, "members": ["boosted", FUSED]},
    }
    assert val_before_refit(ensemble) == {FUSED_HEAD: 0.88, "boosted": 0.86, FUSED: 0.91}
    single = {
        "members": {"boosted": 1.0},
        "tried": ensemble["tried"],
        "refit": {"rows": 850, "members": ["boosted"]},
    }
    assert val_before_refit(single) == {"boosted": 0.86, FUSED: 0.86}  # train.ensemble: false
    assert val_before_refit({**ensemble, "refit": {"rows": 850, "members": []}}) == {}
    assert val_before_refit({k: v for k, v in ensemble.items() if k != "refit"}) == {}
