"""Permutation importance and head block weights, on a real concat head trained on planted data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from modelzoo.heads.base import FusionHead
from modelzoo.registry import names
from tasks.config import FusionConfig, TrainConfig
from tasks.evaluate.evaluation import primary_score
from tasks.evaluate.importance import (
    BlockPart,
    FeatureGroup,
    block_weights,
    feature_groups,
    permutation_importance,
    permuted,
    weights_by_group,
)
from tasks.features.tabular import fit_tabular, transform_tabular
from tasks.train.dataset import FeatureSet
from tasks.train.training import build_head, predict, train_model

FUSION = FusionConfig.model_validate({"head": "concat", "hidden": 32, "dropout": 0.0})
CATEGORICAL, NUMERIC = ["colour"], ["signal", "noise"]  # declared order: the order of the block
FAST = TrainConfig(epochs=12, lr=3e-3, batch_size=64, patience=12, seed=0, device="cpu")


def planted(n_rows: int = 400, seed: int = 0) -> tuple[FeatureSet, dict]:
    """Binary target driven by the numeric column `signal`; `noise` and the text block are random."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "colour": rng.choice(["red", "green", "blue"], size=n_rows),
            "signal": rng.normal(size=n_rows),
            "noise": rng.normal(size=n_rows),
        }
    )
    target = (frame["signal"] + 0.3 * rng.normal(size=n_rows) > 0).to_numpy(dtype=np.float32)
    split = np.array(["train", "val", "test"])[rng.choice(3, size=n_rows, p=[0.6, 0.2, 0.2])]
    state = fit_tabular(frame[split == "train"], CATEGORICAL, NUMERIC)
    text = rng.normal(size=(n_rows, 8)).astype(np.float32)
    features = FeatureSet(
        ids=np.array([f"r{i}" for i in range(n_rows)]),
        split=split,
        target=target,
        inputs={"tabular": transform_tabular(frame, state), "text.note": text},
        present={"tabular": np.ones(n_rows, dtype=bool), "text.note": rng.random(n_rows) > 0.1},
        classes=("0", "1"),
    )
    # As stored in feature files and bundles: JSON with sorted keys, so `noise` now precedes
    # `signal` although the block was built signal-first.
    return features, json.loads(json.dumps(state.to_json(), sort_keys=True))


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, FeatureSet, dict]:
    features, state = planted()
    result = train_model(features, "binary", FUSION, FAST, progress=False)
    return result.model, features.of_split("test"), state


def _auc(model: nn.Module) -> callable:
    return lambda rows: primary_score("binary", rows.target, predict(model, rows, "binary", None))


def _importance(trained: tuple[nn.Module, FeatureSet, dict]) -> pd.DataFrame:
    model, test, state = trained
    groups = feature_groups({k: v.shape[1] for k, v in test.inputs.items()}, state, CATEGORICAL, NUMERIC)
    return permutation_importance(_auc(model), test, groups, repeats=5, seed=0).set_index("feature")


def test_permutation_importance_ranks_the_planted_column_above_the_noise_column(trained) -> None:
    table = _importance(trained)
    assert table.loc["signal", "importance"] > 0.2
    assert (
        table.loc["signal", "importance"] > table.loc["noise", "importance"] + 5 * table.loc["noise", "std"]
    )


def test_permutation_importance_is_the_same_for_the_same_seed(trained) -> None:
    pd.testing.assert_frame_equal(_importance(trained), _importance(trained))


def test_importance_rows_are_sorted_largest_first(trained) -> None:
    importance = _importance(trained)["importance"].to_numpy()
    assert (np.diff(importance) <= 0).all()


def test_feature_groups_cover_the_tabular_block_column_by_column() -> None:
    features, state = planted(n_rows=60)
    groups = feature_groups(
        {"tabular": features.inputs["tabular"].shape[1], "text.note": 8}, state, CATEGORICAL, NUMERIC
    )
    tabular = [g for g in groups if g.modality == "tabular"]
    assert [g.name for g in tabular] == ["colour", "signal", "noise"]
    assert np.concatenate([g.parts[0].index for g in tabular]).tolist() == list(
        range(features.inputs["tabular"].shape[1])
    )


def test_groups_follow_the_declared_order_not_the_stored_key_order() -> None:
    features, state = planted(n_rows=60)
    groups = feature_groups({"tabular": 9, "text.note": 8}, state, CATEGORICAL, NUMERIC)
    signal = next(g for g in groups if g.name == "signal")
    # value then missing flag: the value column is the standardised input
    standardised = features.inputs["tabular"][:, signal.parts[0].index[0]]
    assert np.corrcoef(standardised, features.target)[0, 1] > 0.5


def test_feature_groups_refuse_a_tabular_state_of_the_wrong_width() -> None:
    _, state = planted(n_rows=60)
    with pytest.raises(ValueError, match="wide"):
        feature_groups({"tabular": 5}, state, CATEGORICAL, NUMERIC)


def test_feature_groups_refuse_columns_the_state_does_not_know() -> None:
    _, state = planted(n_rows=60)
    with pytest.raises(ValueError, match="differ"):
        feature_groups({"tabular": 9}, state, CATEGORICAL, ["signal", "weight"])


def test_whole_block_permutation_moves_the_presence_mask_with_the_values() -> None:
    features, _ = planted(n_rows=50)
    order = np.random.default_rng(1).permutation(50)
    shuffled = permuted(features, FeatureGroup("note", "text", (BlockPart("text.note", None),)), order)
    np.testing.assert_array_equal(shuffled.inputs["text.note"], features.inputs["text.note"][order])
    np.testing.assert_array_equal(shuffled.present["text.note"], features.present["text.note"][order])


def test_column_permutation_leaves_the_other_tabular_columns_alone() -> None:
    features, _ = planted(n_rows=50)
    group = FeatureGroup("signal", "tabular", (BlockPart("tabular", np.array([5, 6])),))
    shuffled = permuted(features, group, np.random.default_rng(1).permutation(50))
    untouched = [i for i in range(9) if i not in (5, 6)]
    np.testing.assert_array_equal(
        shuffled.inputs["tabular"][:, untouched], features.inputs["tabular"][:, untouched]
    )


# --- block weights ----------------------------------------------------------------------


class _TwoBlockAttention(FusionHead):
    """A minimal head with per-row block weights, declared as every head declares them."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(1, 1)

    @property
    def block_names(self) -> tuple[str, ...]:
        return ("tabular", "text.note")

    def block_weights(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        # weight on text = 0.8 where text is present, else 0.2: (B, 2)
        text = torch.where(present["text.note"], 0.8, 0.2)
        return torch.stack([1 - text, text], dim=1)

    def predict_and_embed(
        self, inputs: dict[str, Tensor], present: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        return self.score(inputs["tabular"][:, :1]), inputs["tabular"]


class _LateMixture(_TwoBlockAttention):
    """The same mixture for every row, as a late-fusion head has."""

    def block_weights(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        return torch.full((len(present["tabular"]), 2), 0.5)


def test_block_weights_read_per_row_attention() -> None:
    features, _ = planted(n_rows=40)
    weights = block_weights(_TwoBlockAttention(), features)
    expected = np.where(features.present["text.note"], 0.8, 0.2)
    np.testing.assert_allclose(weights["text.note"].to_numpy(), expected, rtol=1e-6)


def test_global_block_weights_repeat_for_every_row() -> None:
    features, _ = planted(n_rows=30)
    weights = block_weights(_LateMixture(), features)
    assert weights.shape == (30, 2)
    np.testing.assert_allclose(weights.to_numpy(), 0.5)


def test_a_head_without_weights_is_skipped(trained) -> None:
    model, test, _ = trained
    assert block_weights(model, test) is None


def test_weights_by_group_averages_per_label() -> None:
    weights = pd.DataFrame({"a": [0.2, 0.4, 0.9], "b": [0.8, 0.6, 0.1]})
    table = weights_by_group(weights, np.array(["x", "x", "y"])).set_index(["label", "block"])
    assert table.loc[("x", "a"), "weight"] == pytest.approx(0.3)
    assert table.loc[("x", "a"), "rows"] == 2


@pytest.mark.parametrize("head", names("head"))
def test_every_registered_head_gives_one_weight_row_per_input_row_or_none(head: str) -> None:
    features, _ = planted(n_rows=20)
    fusion = FusionConfig.model_validate({"head": head, "hidden": 8, "dropout": 0.0})
    model = build_head(fusion, {k: v.shape[1] for k, v in features.inputs.items()}, 1).eval()
    weights = block_weights(model, features)
    assert weights is None or (weights.shape == (20, 2) and set(weights.columns) == {"tabular", "text.note"})


# --- wide_deep: hashed ids travel with their column ----------------------------------------------


def _wide(text_columns: list[str], n_rows: int = 40) -> tuple[FeatureSet, dict, dict]:
    """Dense and wide blocks of one frame, with a colour x signal cross, states as stored (JSON)."""
    from modelzoo.heads.wide_deep import WideOptions
    from tasks.config import ColumnsConfig
    from tasks.features.wide import fit_wide, transform_wide
    from tasks.schema import PRESENT

    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "colour": rng.choice(["red", "green", "blue"], size=n_rows),
            "signal": rng.normal(size=n_rows),
            "noise": rng.normal(size=n_rows),
            **{c: [f"word{i % 7} other{i % 3}" for i in range(n_rows)] for c in text_columns},
        }
    )
    for column in ["colour", *text_columns]:
        frame[PRESENT + column] = True
    columns = ColumnsConfig(categorical=CATEGORICAL, numeric=NUMERIC, text=text_columns)
    wide_state = fit_wide(frame, columns, WideOptions(crosses=[["colour", "signal"]]))
    tabular_state = fit_tabular(frame, CATEGORICAL, NUMERIC)
    blocks, present = transform_wide(frame, wide_state)
    inputs = {"tabular": transform_tabular(frame, tabular_state), **blocks}
    inputs |= {f"text.{c}": rng.normal(size=(n_rows, 4)).astype(np.float32) for c in text_columns}
    present |= {k: np.ones(n_rows, dtype=bool) for k in inputs if k not in present}
    features = FeatureSet(
        np.arange(n_rows).astype(str),
        np.full(n_rows, "test"),
        np.zeros(n_rows, np.float32),
        inputs,
        present,
        ("0", "1"),
    )
    stored = [json.loads(json.dumps(s.to_json(), sort_keys=True)) for s in (tabular_state, wide_state)]
    return features, *stored


def _groups(features: FeatureSet, tabular_state: dict, wide_state: dict) -> dict[str, FeatureGroup]:
    in_dims = {k: v.shape[1] for k, v in features.inputs.items()}
    groups = feature_groups(in_dims, tabular_state, CATEGORICAL, NUMERIC, wide_state)
    names = [g.name for g in groups]
    assert len(names) == len(set(names)), names  # once, both wide blocks were called `__wide__`
    return {g.name: g for g in groups}


def test_shuffling_a_column_shuffles_its_wide_ids_and_its_crosses() -> None:
    features, tabular_state, wide_state = _wide(["note"])
    groups = _groups(features, tabular_state, wide_state)
    order = np.random.default_rng(0).permutation(40)
    shuffled = permuted(features, groups["signal"], order)
    wide = features.inputs["tabular.__wide__"]  # colour, signal, noise, colour x signal
    np.testing.assert_array_equal(shuffled.inputs["tabular.__wide__"][:, [1, 3]], wide[order][:, [1, 3]])
    np.testing.assert_array_equal(shuffled.inputs["tabular.__wide__"][:, [0, 2]], wide[:, [0, 2]])
    noise = permuted(features, groups["noise"], order).inputs["tabular.__wide__"]
    np.testing.assert_array_equal(noise[:, [0, 1, 3]], wide[:, [0, 1, 3]])


def test_one_text_columns_ngrams_move_with_its_embedding() -> None:
    features, tabular_state, wide_state = _wide(["note"])
    groups = _groups(features, tabular_state, wide_state)
    assert {part.block for part in groups["note"].parts} == {"text.note", "text.__wide__"}
    assert set(groups) == {"colour", "signal", "noise", "note"}


def test_several_text_columns_ngrams_are_one_named_group() -> None:
    features, tabular_state, wide_state = _wide(["title", "body"])
    groups = _groups(features, tabular_state, wide_state)
    assert set(groups) == {"colour", "signal", "noise", "title", "body", "n-grams of title, body (wide)"}
