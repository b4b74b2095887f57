"""A request's few rows typed in plain Python give exactly the table ingest's pandas steps give.

Issue 26: `new_rows` cost 24 ms of pandas per-column work for one row, more than half of the
API's latency budget. tasks/serve/small_rows.py types small tables value by value; these
tests compare it with the pandas steps (tasks/serve/predict._typed_rows) on the values a
JSON request and a DataFrame can hold, and check that whatever it does not handle falls back
to those steps, errors included.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.config import DataConfig, params_from_dict
from tasks.errors import DataError
from tasks.schema import PRESENT
from tasks.serve import predict
from tasks.serve.predict import _typed_rows, new_rows
from tasks.serve.small_rows import typed_small
from tests.conftest import tiny_params

SPACES = [" ", "\t", "\u00a0", "\u2003", "\u3000", "\x1c", "\n"]
NA_SPELLINGS = ["", " ", "NA", "n/a", "None", " null ", "#N/A", "nan"]


@pytest.fixture(scope="module")
def data() -> DataConfig:
    """The demo's columns: item_id; category, price, title, description, photo (image), clip (audio)."""
    return params_from_dict(tiny_params()).data


def _roots(tmp_path: Path) -> dict[str, Path]:
    return {"image": tmp_path / "images", "audio": tmp_path / "audio"}


def _assert_same(frame: pd.DataFrame, data: DataConfig) -> None:
    small = typed_small(frame, data)
    assert small is not None, frame.to_dict("list")
    pd.testing.assert_frame_equal(small, _typed_rows(frame, data, "rows"), check_exact=True)


def _text(rng: np.random.Generator) -> object:
    choices = [None, "", "toys", "Toys ", "  a b  ", "007", "ünï", "NA", "x" + str(rng.integers(99))]
    value = choices[int(rng.integers(len(choices)))]
    if isinstance(value, str) and rng.random() < 0.4:
        value = SPACES[int(rng.integers(len(SPACES)))] + value + SPACES[int(rng.integers(len(SPACES)))]
    return value


def _number(rng: np.random.Generator) -> object:
    draw = rng.random()
    if draw < 0.2:
        return None
    if draw < 0.4:
        return int(rng.integers(-1000, 1000))
    if draw < 0.6:
        return float(rng.integers(-50, 50))  # whole
    return float(rng.normal() * 10 ** int(rng.integers(-8, 18)))


def _json_rows(rng: np.random.Generator, count: int) -> list[dict[str, object]]:
    """Rows as the server's request model admits them: str/number/bool/null categories, float prices."""
    rows = []
    for number in range(count):
        category = [_text(rng), _number(rng), bool(rng.integers(2)), None][int(rng.integers(4))]
        price = [None, float(rng.normal() * 100), float(rng.integers(10))][int(rng.integers(3))]
        rows.append(
            {"item_id": [f"r{number}", number, f" id{number}"][int(rng.integers(3))], "category": category,
             "price": price, "title": _text(rng), "description": _text(rng), "photo": None, "clip": None}
        )  # fmt: skip
    return rows


@pytest.mark.parametrize("seed", range(40))
def test_json_rows_are_typed_exactly_as_ingest_types_them(data: DataConfig, seed: int) -> None:
    rng = np.random.default_rng(seed)
    _assert_same(pd.DataFrame.from_records(_json_rows(rng, int(rng.integers(1, 6)))), data)


def _column(kind: str, rng: np.random.Generator, size: int) -> pd.Series:
    """One column of a DataFrame a notebook might pass: numpy, pandas string or mixed object values."""
    if kind == "float":
        values = [_number(rng) for _ in range(size)]
        return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
    if kind == "whole":
        whole = [float(rng.integers(-9, 9)) if rng.random() < 0.8 else math.nan for _ in range(size)]
        return pd.Series(whole, dtype="float64")
    if kind == "int":
        return pd.Series(rng.integers(-5, 5, size), dtype="int64")
    if kind == "bool":
        return pd.Series(rng.integers(0, 2, size).astype(bool))
    if kind == "str":
        return pd.Series([_text(rng) for _ in range(size)], dtype="str")
    if kind == "string":
        return pd.Series([_text(rng) for _ in range(size)], dtype="string")
    mixed = [[_text(rng), _number(rng), True][int(rng.integers(3))] for _ in range(size)]
    return pd.Series(mixed, dtype=object)


KINDS = ["float", "whole", "int", "bool", "str", "string", "object"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(6))
def test_every_column_type_is_typed_exactly_as_ingest_types_it(
    data: DataConfig, kind: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 8))
    frame = pd.DataFrame(
        {"item_id": [f"i{n}" for n in range(size)], "category": _column(kind, rng, size),
         "price": _column(kind if kind in ("float", "whole", "int", "bool") else "float", rng, size),
         "title": _column(kind, rng, size), "description": _column(kind, rng, size),
         "photo": [None] * size, "clip": pd.Series([math.nan] * size)},
        index=pd.Index(rng.permutation(100)[:size] + 10),
    )  # fmt: skip
    _assert_same(frame, data)


def test_blank_and_na_spellings_in_a_text_price_column_are_missing(data: DataConfig) -> None:
    frame = pd.DataFrame(
        {"item_id": [f"i{n}" for n in range(len(NA_SPELLINGS))], "category": "a", "price": NA_SPELLINGS,
         "title": "t", "description": None, "photo": None, "clip": None}
    )  # fmt: skip
    _assert_same(frame, data)


@pytest.mark.parametrize(
    "change",
    [{"price": ["3.5"]}, {"price": [math.inf]}, {"category": [b"\xff bytes"]}, {"title": [["a", "list"]]},
     {"category": pd.Series([np.int64(3)], dtype=object)}, {"item_id": [None]}, {"item_id": ["  "]},
     {"price": [pd.Timestamp(0)]}],
)  # fmt: skip
def test_what_plain_python_does_not_type_is_left_to_ingest(data: DataConfig, change: dict) -> None:
    row = {"item_id": ["a"], "category": ["c"], "price": [1.0], "title": ["t"], "description": ["d"]}
    frame = pd.DataFrame({**row, "photo": [None], "clip": [None], **change})
    assert typed_small(frame, data) is None


def test_ingests_errors_are_raised_as_before(data: DataConfig, tmp_path: Path) -> None:
    row = {"category": "c", "price": 1.0, "title": "t", "description": "d", "photo": None, "clip": None}
    repeated = pd.DataFrame([{"item_id": "a", **row}, {"item_id": "a", **row}])
    with pytest.raises(DataError, match="occur more than once") as refused:
        new_rows(repeated, data, _roots(tmp_path), "request")
    assert refused.value.column == "item_id"
    nested = pd.DataFrame([{"item_id": "a", **row, "title": ["a", "list"]}])
    with pytest.raises(DataError, match="nested values") as refused:
        new_rows(nested, data, _roots(tmp_path), "request")
    assert refused.value.column == "title"


def test_a_one_row_request_is_typed_without_ingests_pandas_steps(
    data: DataConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path is the one taken (the pandas steps would fail here), and new_rows' table is complete."""
    frame = pd.DataFrame.from_records(_json_rows(np.random.default_rng(0), 1))
    expected = new_rows(frame, data, _roots(tmp_path), "request")

    def refuse(*_: object) -> None:
        raise AssertionError("typed by pandas")

    monkeypatch.setattr(predict, "typed_columns", refuse)
    monkeypatch.setattr(predict, "presence", refuse)
    rows = new_rows(frame, data, _roots(tmp_path), "request")
    pd.testing.assert_frame_equal(rows, expected, check_exact=True)
    assert [c for c in rows.columns if c.startswith(PRESENT)] == [PRESENT + c for c in data.columns.all()]
