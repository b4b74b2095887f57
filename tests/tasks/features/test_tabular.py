from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tasks.features.tabular import MAX_CATEGORIES, TabularState, fit_tabular, transform_tabular

CLIP = 10.0


def frame(colour: list, size: list) -> pd.DataFrame:
    return pd.DataFrame({"colour": pd.array(colour, dtype="string"), "size": pd.array(size, dtype="float64")})


def fitted() -> TabularState:
    return fit_tabular(frame(["red", "red", "blue", None], [1.0, 2.0, 3.0, np.nan]), ["colour"], ["size"])


def column(state: TabularState, matrix: np.ndarray, name: str) -> np.ndarray:
    return matrix[:, state.feature_names().index(name)]


def test_state_is_fit_on_the_rows_it_is_given_only() -> None:
    data = frame(["red", "blue", "green", "red"], [1.0, 3.0, 1000.0, 2.0])
    split = np.array(["train", "train", "test", "train"])
    state = fit_tabular(data[split == "train"], ["colour"], ["size"])
    assert state.categorical == {"colour": ["red", "blue"]}
    assert state.numeric["size"][0] == pytest.approx(2.0)
    matrix = transform_tabular(data, state)
    # "green" only occurs in test, so it lands in the unknown slot
    assert column(state, matrix, "colour=<unknown>").tolist() == [0, 0, 1, 0]
    assert "colour=green" not in state.feature_names()


def test_vocabulary_is_most_frequent_first_ties_by_value() -> None:
    state = fit_tabular(frame(["b", "c", "a", "c", "a", "c"], [0.0] * 6), ["colour"], [])
    assert state.categorical["colour"] == ["c", "a", "b"]


def test_vocabulary_is_capped_and_rare_values_are_unknown() -> None:
    values = [f"v{i:03d}" for i in range(MAX_CATEGORIES + 5) for _ in range(2)] + ["v000"]
    state = fit_tabular(frame(values, [0.0] * len(values)), ["colour"], [])
    assert len(state.categorical["colour"]) == MAX_CATEGORIES
    assert state.categorical["colour"][0] == "v000"
    matrix = transform_tabular(frame([f"v{MAX_CATEGORIES + 4:03d}"], [0.0]), state)
    assert column(state, matrix, "colour=<unknown>").tolist() == [1.0]


def test_unknown_category_at_predict_time_maps_to_unknown() -> None:
    state = fitted()
    matrix = transform_tabular(frame(["purple", "red"], [1.0, 1.0]), state)
    assert column(state, matrix, "colour=<unknown>").tolist() == [1.0, 0.0]
    assert column(state, matrix, "colour=red").tolist() == [0.0, 1.0]


def test_missing_category_maps_to_the_missing_slot() -> None:
    state = fitted()
    matrix = transform_tabular(frame([None], [1.0]), state)
    assert column(state, matrix, "colour=<missing>").tolist() == [1.0]
    assert column(state, matrix, "colour=<unknown>").tolist() == [0.0]


def test_each_categorical_row_is_one_hot() -> None:
    state = fitted()
    matrix = transform_tabular(frame(["red", "blue", "purple", None], [1.0] * 4), state)
    width = len(state.categorical["colour"]) + 2
    assert matrix[:, :width].sum(axis=1).tolist() == [1.0] * 4


def test_nan_numeric_is_zero_with_missing_flag() -> None:
    state = fitted()
    matrix = transform_tabular(frame(["red", "red"], [np.nan, 2.0]), state)
    assert column(state, matrix, "size").tolist() == [0.0, 0.0]  # 2.0 is the train mean
    assert column(state, matrix, "size:missing").tolist() == [1.0, 0.0]


def test_numerics_are_standardised_with_train_mean_and_std() -> None:
    state = fitted()  # train sizes 1, 2, 3 -> mean 2, population std sqrt(2/3)
    mean, std = state.numeric["size"]
    assert mean == pytest.approx(2.0)
    assert std == pytest.approx(np.sqrt(2 / 3))
    matrix = transform_tabular(frame(["red"], [3.0]), state)
    assert column(state, matrix, "size")[0] == pytest.approx(1 / np.sqrt(2 / 3), rel=1e-6)


def test_huge_values_are_clipped() -> None:
    state = fitted()
    matrix = transform_tabular(frame(["red", "red"], [1e300, -1e300]), state)
    assert column(state, matrix, "size").tolist() == [CLIP, -CLIP]
    assert column(state, matrix, "size:missing").tolist() == [0.0, 0.0]


def test_infinite_values_become_missing_not_nan() -> None:
    state = fitted()
    matrix = transform_tabular(frame(["red", "red"], [np.inf, -np.inf]), state)
    assert np.isfinite(matrix).all()
    assert column(state, matrix, "size").tolist() == [0.0, 0.0]
    assert column(state, matrix, "size:missing").tolist() == [1.0, 1.0]


def test_huge_training_values_keep_the_state_and_output_finite() -> None:
    state = fit_tabular(frame(["red"] * 4, [1.0, 2.0, 1e308, 1e308]), ["colour"], ["size"])
    mean, std = state.numeric["size"]
    assert np.isfinite(mean) and np.isfinite(std) and std > 0
    json.dumps(state.to_json(), allow_nan=False)  # bundle.json must be standard JSON
    matrix = transform_tabular(frame(["red"] * 3, [1.0, 1e308, -1e308]), state)
    assert np.isfinite(matrix).all()
    assert np.abs(matrix).max() <= CLIP


def test_constant_or_single_value_column_does_not_divide_by_zero() -> None:
    constant = fit_tabular(frame(["red"] * 3, [5.0, 5.0, 5.0]), [], ["size"])
    single = fit_tabular(frame(["red", "red"], [5.0, np.nan]), [], ["size"])
    empty = fit_tabular(frame(["red"], [np.nan]), [], ["size"])
    for state in (constant, single, empty):
        matrix = transform_tabular(frame(["red"], [7.0]), state)
        assert np.isfinite(matrix).all()
        assert state.numeric["size"][1] == 1.0


def test_width_equals_feature_names_length() -> None:
    state = fitted()
    matrix = transform_tabular(frame(["red", "blue", None], [1.0, np.nan, 3.0]), state)
    assert state.width == len(state.feature_names()) == matrix.shape[1]
    assert matrix.dtype == np.float32
    assert matrix.shape[0] == 3


def test_no_columns_gives_an_empty_matrix() -> None:
    state = fit_tabular(frame(["red"], [1.0]), [], [])
    matrix = transform_tabular(frame(["red", "blue"], [1.0, 2.0]), state)
    assert matrix.shape == (2, 0)
    assert state.width == 0


def test_state_round_trips_through_json() -> None:
    state = fitted()
    restored = TabularState.from_json(json.loads(json.dumps(state.to_json())))
    assert restored == state
    data = frame(["red", "blue", "purple", None], [1.0, np.nan, 1e9, 2.5])
    np.testing.assert_array_equal(transform_tabular(data, restored), transform_tabular(data, state))


def test_column_order_survives_a_bundle_written_with_sorted_keys() -> None:
    """bundle.json is dumped with sort_keys; the block layout must still follow fit order."""
    data = pd.DataFrame(
        {"zone": ["n", "s", "n"], "area": ["x", "y", "y"], "width": [1.0, 2.0, 3.0], "age": [9.0, 8.0, 7.0]}
    )
    state = fit_tabular(data, ["zone", "area"], ["width", "age"])
    restored = TabularState.from_json(json.loads(json.dumps(state.to_json(), sort_keys=True)))
    assert list(restored.categorical) == ["zone", "area"]
    assert list(restored.numeric) == ["width", "age"]
    np.testing.assert_array_equal(transform_tabular(data, restored), transform_tabular(data, state))
