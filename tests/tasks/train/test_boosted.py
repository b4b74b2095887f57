"""The gradient-boosted member on features written by the real align step and feature store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.config import ColumnsConfig, DataConfig, params_from_dict
from tasks.data.align import ID, PRESENT, SPLIT, align
from tasks.errors import BundleError
from tasks.features.feature_store import write_blocks
from tasks.features.tabular import fit_tabular, transform_tabular
from tasks.paths import Layout
from tasks.scores.metrics import score
from tasks.train.assemble import load_feature_set, rows_in_order
from tasks.train.boosted import (
    ARRAYS,
    BAGS,
    META,
    MODEL,
    BoostedModel,
    BoostedResult,
    boost,
    boost_inputs,
    fit_boosted,
    read_boosted,
    write_boosted,
)
from tasks.train.bundle import meta_digest
from tasks.train.dataset import FeatureSet
from tasks.train.members import load_member
from tasks.train.plan import BOOSTED, boosted_skip_reason, member_plan

COLUMNS = ColumnsConfig(categorical=["colour"], numeric=["price"], text=["note"])
METRIC = {"binary": "auc", "multiclass": "accuracy", "regression": "rmse"}
ROWS = 500

Prepared = tuple[FeatureSet, pd.DataFrame]


def _items(task: str, seed: int = 0) -> pd.DataFrame:
    """The target follows `colour`, `price` and one direction of the note's embedding (see _prepare)."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], size=ROWS)
    price = rng.normal(size=ROWS)
    hidden = rng.normal(size=ROWS)  # what the note's embedding carries
    signal = (colour == "red") * 1.5 + price + hidden + 0.3 * rng.normal(size=ROWS)
    if task == "regression":
        label = pd.Series(10 * signal + 50)
    elif task == "multiclass":
        classes = np.array(["gold", "iron", "wood"])
        label = pd.Series(classes[np.digitize(signal, [-0.5, 1.0])]).astype("string")
    else:
        label = pd.Series(np.where(signal > 0.5, "yes", "no")).astype("string")
    frame = pd.DataFrame(
        {
            "item_id": pd.Series([f"i{i:04d}" for i in range(ROWS)]).astype("string"),
            "label": label,
            "colour": pd.Series(colour).astype("string"),
            "price": price,
            "note": pd.Series([f"note {i}" if i % 10 else None for i in range(ROWS)]).astype("string"),
        }
    )
    frame.attrs["hidden"] = hidden
    return frame


def _prepare(workdir: Path, task: str) -> Prepared:
    """Align the items, write the tabular and text feature files, and read them back as train does."""
    frame = _items(task)
    data = DataConfig.model_validate(
        {"sources": [{"path": "items.csv"}], "id": "item_id", "target": "label", "task": task,
         "columns": COLUMNS.model_dump()}
    )  # fmt: skip
    aligned, _ = align(data, [("items.csv", frame)])
    layout = Layout(workdir)
    layout.aligned_dir.mkdir(parents=True)
    aligned.to_parquet(layout.aligned, index=False)
    ids = aligned[ID].to_numpy(dtype=object)
    state = fit_tabular(aligned[aligned[SPLIT] == "train"], ["colour"], ["price"])
    write_blocks(layout.feature_file("tabular"), ids, {"tabular": transform_tabular(aligned, state)},
                 {"tabular": np.ones(len(ids), dtype=bool)}, {"tabular_state": state.to_json()})  # fmt: skip
    hidden = pd.Series(frame.attrs["hidden"], index=frame["item_id"].astype(str)).loc[ids.astype(str)]
    rng = np.random.default_rng(1)
    note = rng.normal(scale=0.3, size=(len(ids), 24)) + np.outer(hidden.to_numpy(), rng.normal(size=24))
    present = aligned[PRESENT + "note"].to_numpy(dtype=bool)
    write_blocks(layout.feature_file("text"), ids, {"text.note": note.astype(np.float32)},
                 {"text.note": present}, {})  # fmt: skip
    features = load_feature_set(layout, task)
    return features, rows_in_order(aligned, features.ids)


@pytest.fixture(scope="module", params=["binary", "multiclass", "regression"])
def prepared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    task = request.param
    return task, _prepare(tmp_path_factory.mktemp(task), task)


@pytest.fixture(scope="module")
def fitted(prepared: tuple[str, Prepared]) -> tuple[str, Prepared, BoostedResult]:
    task, (features, rows) = prepared
    return task, (features, rows), fit_boosted(features, rows, COLUMNS, task, METRIC[task], seed=0)


def _on(split: str, features: FeatureSet, rows: pd.DataFrame) -> tuple[FeatureSet, pd.DataFrame]:
    mask = features.split == split
    return features.rows(mask), rows[mask].reset_index(drop=True)


def test_it_learns_the_planted_signal_in_the_heads_prediction_form(
    fitted: tuple[str, Prepared, BoostedResult],
) -> None:
    task, (features, rows), result = fitted
    test, test_rows = _on("test", features, rows)
    predicted = result.model.predict(test, test_rows)
    value = score(task, METRIC[task], test.target, predicted)
    if task == "multiclass":
        assert predicted.shape == (len(test.ids), 3) and np.allclose(predicted.sum(axis=1), 1.0)
        assert value > 0.6, value  # three classes: chance is about 0.33
    else:
        assert predicted.shape == (len(test.ids),)
        assert value > 0.8 if task == "binary" else value < 0.6 * float(np.std(test.target)), value


def test_the_kept_round_is_the_best_on_val_by_the_chosen_metric(
    fitted: tuple[str, Prepared, BoostedResult],
) -> None:
    task, _, result = fitted
    metric = METRIC[task]
    values = [entry[metric] for entry in result.history]
    best = max(values) if metric != "rmse" else min(values)
    assert values[result.best_epoch - 1] == best and len(values) > result.best_epoch  # stopped past it


def test_without_a_chosen_metric_it_stops_on_the_val_loss_as_the_heads_do(tmp_path: Path) -> None:
    features, rows = _prepare(tmp_path, "binary")
    result = fit_boosted(features, rows, COLUMNS, "binary", None, seed=0)
    losses = [entry["smooth_loss"] for entry in result.history]
    assert losses[result.best_epoch - 1] == min(losses) and result.model.info["stopped_on"] == "val loss"


def test_the_saved_member_predicts_exactly_what_was_trained(
    fitted: tuple[str, Prepared, BoostedResult], tmp_path: Path
) -> None:
    task, (features, rows), result = fitted
    write_boosted(tmp_path / "members" / BOOSTED, result.model)
    loaded = load_member(tmp_path, BOOSTED, BOOSTED)  # as evaluate and `fuseline predict` load it
    assert (tmp_path / "members" / BOOSTED / MODEL).read_text().startswith("tree")  # LightGBM's text format
    assert np.array_equal(loaded.predict(features, rows), result.model.predict(features, rows))


def test_the_same_seed_gives_the_same_model_and_another_seed_another(tmp_path: Path) -> None:
    features, rows = _prepare(tmp_path, "binary")
    first, again, other = (fit_boosted(features, rows, COLUMNS, "binary", "auc", seed=s) for s in (7, 7, 8))
    assert first.model.texts == again.model.texts
    assert np.array_equal(first.model.predict(features, rows), again.model.predict(features, rows))
    assert other.model.texts != first.model.texts


def test_the_member_is_the_mean_of_boosters_with_consecutive_seeds(
    fitted: tuple[str, Prepared, BoostedResult],
) -> None:
    task, (features, rows), result = fitted
    inputs = boost_inputs(features, rows, COLUMNS, task)
    singles = [boost(inputs, METRIC[task], seed, bags=1).model for seed in range(BAGS)]
    assert BAGS > 1 and result.model.texts == tuple(single.texts[0] for single in singles)
    mean = sum(single.predict(features, rows) for single in singles) / BAGS
    assert np.allclose(result.model.predict(features, rows), mean, rtol=0, atol=1e-12)
    assert [bag["seed"] for bag in result.model.info["bags"]] == list(range(BAGS))


def test_a_member_written_in_format_one_still_loads(
    fitted: tuple[str, Prepared, BoostedResult], tmp_path: Path
) -> None:
    """Registry versions trained before bagging hold one booster and no booster count."""
    task, (features, rows), result = fitted
    single = BoostedModel(result.model.texts[:1], result.model.layout, task, result.model.classes, {})
    write_boosted(tmp_path, single)
    meta = json.loads((tmp_path / META).read_text())
    meta["format_version"] = 1
    del meta["boosters"], meta["digest"]["bags"]
    meta["digest"]["meta"] = meta_digest(meta)
    (tmp_path / META).write_text(json.dumps(meta))
    loaded = read_boosted(tmp_path)
    assert len(loaded.boosters) == 1
    assert np.array_equal(loaded.predict(features, rows), single.predict(features, rows))


@pytest.mark.parametrize("name", [MODEL, "boosted.bag2.txt", ARRAYS, META])
def test_a_changed_file_is_refused_in_one_line_naming_it(
    name: str, fitted: tuple[str, Prepared, BoostedResult], tmp_path: Path
) -> None:
    _, _, result = fitted
    write_boosted(tmp_path, result.model)
    path = tmp_path / name
    if name == META:
        meta = json.loads(path.read_text())
        codes = meta["layout"]["categorical"][0][1]
        codes.reverse()  # every colour now means another: still parses, only the digest can tell
        path.write_text(json.dumps(meta))
    else:
        body = path.read_bytes()
        path.write_bytes(body[:-2] + bytes([body[-2] ^ 1]) + body[-1:])
    with pytest.raises(BundleError) as refused:
        read_boosted(tmp_path)
    assert name in str(refused.value) and "\n" not in str(refused.value)
    (tmp_path / "boosted.bag1.txt").unlink()
    with pytest.raises(BundleError, match="boosted.bag1.txt"):
        read_boosted(tmp_path)
    write_boosted(tmp_path / "intact", result.model)
    read_boosted(tmp_path / "intact")


def test_a_spent_deadline_keeps_the_first_round(tmp_path: Path) -> None:
    features, rows = _prepare(tmp_path, "binary")
    result = fit_boosted(features, rows, COLUMNS, "binary", "auc", seed=0, deadline=time.time() - 1)
    assert result.best_epoch == 1 and len(result.history) == 1 and len(result.model.texts) == 1


def test_every_preset_plans_it_but_multilabel_says_why_not() -> None:
    raw = {
        "data": {"sources": [{"path": "items.csv"}], "id": "item_id", "target": "label", "task": "binary",
                 "columns": {"categorical": ["colour"], "text": ["note"]}, "demo": None},
    }  # fmt: skip
    for preset in ("fast", "best"):
        plan = member_plan(params_from_dict({**raw, "train": {"preset": preset}}), ["tabular", "text"])
        assert [m.kind for m in plan].count(BOOSTED) == 1
    assert boosted_skip_reason("binary") is None and "multilabel" in str(boosted_skip_reason("multilabel"))
    raw["data"]["task"] = "multilabel"
    assert BOOSTED not in [m.name for m in member_plan(params_from_dict(raw), ["tabular", "text"])]
