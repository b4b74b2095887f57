"""Multilabel targets: any list form becomes one canonical form at align, then a 0/1 matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.config import DataConfig
from tasks.data.align import SPLIT, TARGET, align
from tasks.data.ingest import ingest_sources, read_snapshots
from tasks.data.labels import parse_labels
from tasks.errors import DataError
from tasks.train.assemble import encode_target

DATA = {
    "sources": [{"path": "items.jsonl"}],
    "id": "item_id",
    "target": "tags",
    "task": "multilabel",
    "columns": {"text": ["title"]},
}


@pytest.mark.parametrize(
    "cell",
    [
        ["red", "blue"],
        ("blue", "red", "red"),
        np.array(["red", "blue"]),
        "red|blue",
        " blue | red ",
        '["red", "blue"]',
        "['red', 'blue']",  # what ingest makes of a Python list
        "['red' 'blue']",  # ... and of a NumPy array from Parquet
    ],
)
def test_every_list_form_parses_to_the_same_sorted_labels(cell: object) -> None:
    assert parse_labels(cell) == ["blue", "red"]


def test_an_empty_cell_has_no_labels() -> None:
    assert parse_labels("") == [] and parse_labels("[]") == []


def frame(rows: int = 60) -> pd.DataFrame:
    tags = [["a"], ["b"], ["a", "c"], [], ["c", "b", "a"]]
    return pd.DataFrame(
        {
            "item_id": pd.Series([f"id-{i:03d}" for i in range(rows)], dtype="string"),
            "tags": pd.Series([str(tags[i % len(tags)]) for i in range(rows)], dtype="string"),
            "title": pd.Series([f"title {i}" for i in range(rows)], dtype="string"),
        }
    )


def test_align_writes_canonical_json_and_splits_without_stratifying() -> None:
    aligned, report = align(DataConfig.model_validate(DATA), [("items.jsonl", frame())])
    assert set(aligned[TARGET]) == {'["a"]', '["b"]', '["a", "c"]', "[]", '["a", "b", "c"]'}
    assert report.rows_per_split == {"train": 42, "val": 9, "test": 9}
    assert set(aligned[SPLIT]) == {"train", "val", "test"}


def test_a_single_label_overall_is_a_data_error() -> None:
    one = frame()
    one["tags"] = pd.Series(["['a']"] * len(one), dtype="string")
    with pytest.raises(DataError, match="at least 2 distinct labels"):
        align(DataConfig.model_validate(DATA), [("items.jsonl", one)])


def test_encode_target_gives_one_indicator_column_per_label() -> None:
    values = pd.Series(['["a", "c"]', "[]", '["b"]'])
    target, classes = encode_target(values, "multilabel")
    assert classes == ("a", "b", "c")
    np.testing.assert_array_equal(target, [[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    assert target.dtype == np.float32


def test_labels_unseen_in_training_are_a_data_error() -> None:
    with pytest.raises(DataError, match="unseen"):
        encode_target(pd.Series(['["a", "z"]']), "multilabel", ("a", "b"))


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_list_targets_survive_ingest_and_align(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / f"items.{suffix}"
    table = pd.DataFrame(
        {
            "item_id": [f"id-{i:03d}" for i in range(40)],
            "tags": [["a", "b"] if i % 2 else ["c"] for i in range(40)],
            "title": [f"title {i}" for i in range(40)],
        }
    )
    if suffix == "jsonl":
        table.to_json(source, orient="records", lines=True)
    else:
        table.to_parquet(source)
    data = DataConfig.model_validate({**DATA, "sources": [{"path": str(source)}]})
    ingest_sources(data, tmp_path / "raw")
    aligned, _ = align(data, read_snapshots(tmp_path / "raw"))
    target, classes = encode_target(aligned[TARGET], "multilabel")
    assert classes == ("a", "b", "c")
    assert sorted(map(tuple, target.astype(int).tolist())) == [(0, 0, 1)] * 20 + [(1, 1, 0)] * 20
