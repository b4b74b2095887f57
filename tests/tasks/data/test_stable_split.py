"""Issue 14 §1: `data.split.method: hash` keeps every existing row in its split when rows are added."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.config import params_from_dict
from tasks.data.align import ID, SPLIT, align
from tests.tasks.evaluate.test_flow import _items, _params


def _data(method: str, column: str | None = None):  # noqa: ANN202
    raw = _params()
    raw["data"]["split"] = {"method": method, "seed": 3, **({"column": column} if column else {})}
    return params_from_dict(raw).data


def _splits(data, frame: pd.DataFrame) -> pd.Series:  # noqa: ANN001
    aligned, _ = align(data, [("items.csv", frame)])
    return aligned.set_index(ID)[SPLIT]


def _grown(frame: pd.DataFrame, extra: int) -> pd.DataFrame:
    """The same rows, shuffled, plus `extra` new ones: a later snapshot of the same source."""
    new = _items(seed=9).head(extra).copy()
    new["item_id"] = [f"n{i:04d}" for i in range(extra)]
    return pd.concat([frame, new]).sample(frac=1.0, random_state=1).reset_index(drop=True)


def test_adding_ten_percent_of_rows_moves_no_old_row() -> None:
    frame = _items()
    data = _data("hash")
    before = _splits(data, frame)
    after = _splits(data, _grown(frame, len(frame) // 10))
    assert (after.loc[before.index] == before).all()
    shares = before.value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.08 and abs(shares["test"] - 0.15) < 0.06


def test_todays_stratified_split_moves_rows_when_rows_are_added() -> None:
    """Why the scheduled path needs `hash`: the exact stratified draw is redrawn for every table."""
    frame = _items()
    data = _data("stratified")
    before = _splits(data, frame)
    after = _splits(data, _grown(frame, len(frame) // 10))
    assert (after.loc[before.index] != before).any()


def test_val_carved_by_hash_from_a_given_split_column_is_stable_too() -> None:
    frame = _items()
    frame["fold"] = np.where(np.arange(len(frame)) % 5 == 0, "test", "train")
    data = _data("hash", column="fold")
    before = _splits(data, frame)
    assert set(before[frame.set_index("item_id")["fold"] == "test"]) == {"test"}
    grown = _grown(frame, 40)
    grown["fold"] = grown["fold"].fillna("train")
    after = _splits(data, grown)
    assert (after.loc[before.index] == before).all() and (before == "val").sum() > 20


@pytest.mark.parametrize("seed", [0, 1])
def test_the_seed_still_chooses_the_split(seed: int) -> None:
    from tasks.data.align import hash_split

    ids = np.array([f"r{i}" for i in range(500)])
    assert (hash_split(ids, seed, 0.7, 0.15) != hash_split(ids, seed + 10, 0.7, 0.15)).mean() > 0.2


def test_a_group_stays_in_one_split_and_a_shared_text_is_reported() -> None:
    """Issue 14 §1: data.split.group keeps a group's rows together; a text in two splits is
    warned about, and refused with data.split.dedupe."""
    from tasks.errors import DataError

    frame = _items()
    frame["shop"] = [f"s{i % 37}" for i in range(len(frame))]
    raw = _params()
    raw["data"]["split"] = {"method": "hash", "seed": 3, "group": "shop"}
    aligned, report = align(params_from_dict(raw).data, [("items.csv", frame)])
    per_group = aligned.assign(shop=frame.set_index("item_id").loc[aligned[ID], "shop"].to_numpy())
    assert (per_group.groupby("shop")[SPLIT].nunique() == 1).all()
    # `note` takes three values, so every one of them sits in several splits
    assert report.cross_split_duplicates["note"] == len(aligned)
    raw["data"]["split"]["dedupe"] = True
    with pytest.raises(DataError, match="rows share their 'note' value with a row of another split"):
        align(params_from_dict(raw).data, [("items.csv", frame)])


def test_groups_need_the_hash_split() -> None:
    from tasks.errors import ConfigError

    raw = _params()
    raw["data"]["split"] = {"group": "shop"}
    with pytest.raises(ConfigError, match="group: keeping groups together needs method: hash"):
        params_from_dict(raw)
