"""The wide part's inputs: hashed ids of categories, numeric buckets, crosses and text n-grams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelzoo.heads.wide_deep import WideOptions
from tasks.config import DataConfig, params_from_dict
from tasks.data.align import PRESENT, SPLIT, align
from tasks.errors import ConfigError
from tasks.features.feature_store import read_blocks
from tasks.features.wide import TABULAR_WIDE, TEXT_WIDE, WideState, fit_wide, transform_wide, wide_blocks
from tests.conftest import tiny_params

DATA = {
    "sources": [{"path": "items.csv"}],
    "id": "item_id",
    "target": "label",
    "task": "binary",
    "columns": {"categorical": ["category"], "numeric": ["price"], "text": ["title"]},
}
OPTIONS = WideOptions(crosses=[["category", "price"]], buckets=1 << 12, numeric_bins=4, max_ngrams=6)


def aligned_items(rows: int = 60) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "item_id": [f"id-{i:03d}" for i in range(rows)],
            "label": [str(i % 2) for i in range(rows)],
            "category": [None if i % 10 == 0 else ("a", "b", "c")[i % 3] for i in range(rows)],
            "price": [float(i) for i in range(rows)],
            "title": ["" if i % 7 == 0 else f"solid oak box number {i}" for i in range(rows)],
        }
    )
    for column in ("item_id", "label", "category", "title"):
        frame[column] = frame[column].astype("string")
    aligned, _ = align(DataConfig.model_validate(DATA), [("items.csv", frame)])
    return aligned


def build(aligned: pd.DataFrame, options: WideOptions = OPTIONS) -> tuple[dict, dict, WideState]:
    state = fit_wide(aligned[aligned[SPLIT] == "train"], DataConfig.model_validate(DATA).columns, options)
    blocks, present = transform_wide(aligned, state)
    return blocks, present, state


def test_tabular_block_has_one_id_per_column_and_cross() -> None:
    blocks, present, _ = build(aligned_items())
    ids = blocks[TABULAR_WIDE]
    assert ids.shape == (60, 3)  # category, price bucket, category x price
    assert ((ids >= 1) & (ids <= OPTIONS.buckets)).all()
    assert present[TABULAR_WIDE].all()


def test_same_value_gets_the_same_id_in_every_row_and_run() -> None:
    aligned = aligned_items()
    first, _, _ = build(aligned)
    again, _, _ = build(aligned)
    np.testing.assert_array_equal(first[TABULAR_WIDE], again[TABULAR_WIDE])
    category_b = (aligned["category"] == "b").fillna(False).to_numpy(dtype=bool)
    assert len(np.unique(first[TABULAR_WIDE][category_b, 0])) == 1


def test_missing_category_has_its_own_id() -> None:
    aligned = aligned_items()
    blocks, _, _ = build(aligned)
    missing = ~aligned[PRESENT + "category"].to_numpy(dtype=bool)
    assert missing.any()
    missing_ids = set(blocks[TABULAR_WIDE][missing, 0])
    assert len(missing_ids) == 1 and not missing_ids & set(blocks[TABULAR_WIDE][~missing, 0])


def test_cross_has_one_id_per_pair_of_values() -> None:
    blocks, _, _ = build(aligned_items())
    ids = blocks[TABULAR_WIDE]
    pairs = {(a, b) for a, b, _ in ids}
    triples = {(a, b, c) for a, b, c in ids}
    assert len(pairs) > len(set(ids[:, 0])) and len(pairs) > len(set(ids[:, 1]))
    assert len(triples) == len(pairs) == len(set(ids[:, 2]))  # a function of the pair, and 1-to-1


def test_numeric_buckets_are_fitted_on_train_rows_only() -> None:
    aligned = aligned_items()
    _, _, state = build(aligned)
    train_prices = aligned.loc[aligned[SPLIT] == "train", "price"]
    expected = np.quantile(train_prices, [0.25, 0.5, 0.75])
    np.testing.assert_allclose(state.numeric_edges["price"], expected)


def test_text_block_holds_distinct_ngrams_up_to_the_cap() -> None:
    aligned = aligned_items()
    blocks, present, state = build(aligned)
    ids = blocks[TEXT_WIDE]
    # "solid oak box number N": 5 words -> 5 unigrams + 4 bigrams = 9, capped at max_ngrams = 6
    assert state.text_slots == 6 and ids.shape == (60, 6)
    has_text = aligned[PRESENT + "title"].to_numpy(dtype=bool)
    assert ((ids[has_text] > 0).sum(axis=1) == 6).all()
    row = ids[np.flatnonzero(has_text)[0]]
    assert len(set(row)) == 6


def test_rows_without_text_are_absent_and_all_padding() -> None:
    aligned = aligned_items()
    blocks, present, _ = build(aligned)
    no_text = ~aligned[PRESENT + "title"].to_numpy(dtype=bool)
    assert no_text.any()
    assert not present[TEXT_WIDE][no_text].any()
    assert (blocks[TEXT_WIDE][no_text] == 0).all()


def test_text_width_is_fixed_at_fit_time() -> None:
    aligned = aligned_items()
    _, _, state = build(aligned, OPTIONS.model_copy(update={"max_ngrams": 100}))
    longer = aligned.copy()
    longer["title"] = "a much longer title with many more words than any training row had at all"
    blocks, _ = transform_wide(longer, state)
    assert blocks[TEXT_WIDE].shape[1] == state.text_slots == 9


def test_state_survives_json() -> None:
    _, _, state = build(aligned_items())
    assert WideState.from_json(state.to_json()) == state


def test_cross_of_an_undeclared_column_names_the_key() -> None:
    options = WideOptions(crosses=[["category", "prise"]])
    with pytest.raises(ConfigError, match=r"fusion\.wide\.crosses\[0\].*prise.*did you mean 'price'"):
        build(aligned_items(), options)


def test_extract_tabular_writes_the_wide_blocks(tmp_path: Path) -> None:
    from flows.extract import extract_tabular

    aligned = aligned_items()
    raw = tiny_params()
    raw["data"] = {**raw["data"], **DATA, "image_root": ".", "demo": None}
    raw["data"]["columns"] = {**DATA["columns"]}
    raw["fusion"] = {**raw["fusion"], "wide": {"crosses": [["category", "price"]]}}
    params = params_from_dict(raw)
    extract_tabular.fn(params, aligned, tmp_path / "tabular.parquet")
    _, blocks, present, metadata = read_blocks(tmp_path / "tabular.parquet")
    expected, _, state = wide_blocks(aligned, params)
    assert set(blocks) == {"tabular", TABULAR_WIDE, TEXT_WIDE}
    np.testing.assert_array_equal(blocks[TEXT_WIDE], expected[TEXT_WIDE])
    assert metadata["wide_state"] == state


def test_blocks_built_a_chunk_of_rows_at_a_time_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunking bounds the Python keys held at once (a million rows) and changes no id."""
    aligned = aligned_items()
    whole_blocks, whole_present, state = build(aligned)
    monkeypatch.setattr("tasks.features.wide.CHUNK_ROWS", 7)  # 60 rows: 9 chunks, the last short
    columns = DataConfig.model_validate(DATA).columns
    assert fit_wide(aligned[aligned[SPLIT] == "train"], columns, OPTIONS) == state
    blocks, present = transform_wide(aligned, state)
    assert blocks.keys() == whole_blocks.keys() == {TABULAR_WIDE, TEXT_WIDE}
    for name in blocks:
        np.testing.assert_array_equal(blocks[name], whole_blocks[name])
        np.testing.assert_array_equal(present[name], whole_present[name])
    empty_blocks, _ = transform_wide(aligned.iloc[:0], state)
    assert {k: v.shape for k, v in empty_blocks.items()} == {k: (0, v.shape[1]) for k, v in blocks.items()}
