from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.config import DataConfig
from tasks.data.align import AlignReport, align
from tasks.data.ingest import ingest_sources, read_snapshots
from tasks.errors import DataError

ROWS = {
    "item_id": [1, 2, 3, 4],
    "label": ["yes", "no", "yes", "no"],
    "category": ["a", "b", "a", "c"],
    "price": [1.5, 2.0, None, 4.25],
    "description": ["red cup", "blue mug", "", "green bowl"],
    "extra": ["x", "y", "z", "w"],  # not declared: must not reach the snapshot
}


def data_config(*sources: Path, **overrides: object) -> DataConfig:
    raw: dict = {
        "sources": [{"path": str(path)} for path in sources],
        "id": "item_id",
        "target": "label",
        "task": "binary",
        "columns": {"categorical": ["category"], "numeric": ["price"], "text": ["description"]},
    }
    raw.update(overrides)
    return DataConfig.model_validate(raw)


def write_csv(path: Path, frame: pd.DataFrame | dict) -> Path:
    pd.DataFrame(frame).to_csv(path, index=False)
    return path


def ingest_error(data: DataConfig, out: Path) -> DataError:
    with pytest.raises(DataError) as info:
        ingest_sources(data, out)
    return info.value


def write_source(frame: pd.DataFrame, path: Path) -> None:
    """`frame` as the source format its suffix names: csv, parquet or jsonl."""
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_each_source_format_is_snapshotted(tmp_path: Path, fmt: str) -> None:
    frame = pd.DataFrame(ROWS)
    path = tmp_path / f"items.{fmt}"
    write_source(frame, path)

    snapshots = ingest_sources(data_config(path), tmp_path / "raw")

    assert [s.rows for s in snapshots] == [4]
    [(source, table)] = read_snapshots(tmp_path / "raw")
    assert source == str(path)
    assert list(table["item_id"]) == ["1", "2", "3", "4"]
    assert list(table["label"]) == ["yes", "no", "yes", "no"]
    assert list(table["category"]) == ["a", "b", "a", "c"]
    assert table["price"].tolist()[:2] == [1.5, 2.0]
    assert pd.isna(table["price"].iloc[2])


def test_snapshot_keeps_only_declared_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "items.csv", ROWS)
    ingest_sources(data_config(path), tmp_path / "raw")
    [(_, table)] = read_snapshots(tmp_path / "raw")
    assert set(table.columns) == {"item_id", "label", "category", "price", "description"}


def test_snapshot_ids_are_strings(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "items.csv", ROWS)
    ingest_sources(data_config(path), tmp_path / "raw")
    [(_, table)] = read_snapshots(tmp_path / "raw")
    assert pd.api.types.is_string_dtype(table["item_id"])
    assert all(isinstance(v, str) for v in table["item_id"])


def test_numeric_columns_are_float64(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "items.csv", {**ROWS, "price": [1, 2, 3, 4]})
    ingest_sources(data_config(path), tmp_path / "raw")
    [(_, table)] = read_snapshots(tmp_path / "raw")
    assert table["price"].dtype == "float64"


def test_whole_float_ids_lose_their_decimal_point(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    pd.DataFrame({**ROWS, "item_id": [1.0, 2.0, 3.0, 4.0]}).to_parquet(path, index=False)
    ingest_sources(data_config(path), tmp_path / "raw")
    [(_, table)] = read_snapshots(tmp_path / "raw")
    assert list(table["item_id"]) == ["1", "2", "3", "4"]


def test_csv_ids_keep_leading_zeros(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("item_id,label,category,price,description\n007,yes,a,1,x\n008,no,b,2,y\n")
    ingest_sources(data_config(path), tmp_path / "raw")
    [(_, table)] = read_snapshots(tmp_path / "raw")
    assert list(table["item_id"]) == ["007", "008"]


def test_jsonl_strings_are_not_reinterpreted(tmp_path: Path) -> None:
    # JSON is typed: a string id stays a string, and a number in an `*_at` column stays a number.
    path = tmp_path / "items.jsonl"
    lines = [
        {"item_id": "007", "label": "yes", "category": "a", "created_at": 1600000000, "description": "1"},
        {"item_id": "008", "label": "no", "category": "b", "created_at": 1600000001, "description": "x"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = data_config(
        path, columns={"categorical": ["category"], "numeric": ["created_at"], "text": ["description"]}
    )
    ingest_sources(data, tmp_path / "raw")
    [(_, table)] = read_snapshots(tmp_path / "raw")
    assert list(table["item_id"]) == ["007", "008"]
    assert table["created_at"].tolist() == [1600000000.0, 1600000001.0]
    assert list(table["description"]) == ["1", "x"]


def test_multiple_sources_each_keep_their_declared_columns(tmp_path: Path) -> None:
    first = write_csv(tmp_path / "a.csv", {k: ROWS[k] for k in ("item_id", "label", "category", "price")})
    second = write_csv(tmp_path / "b.csv", {k: ROWS[k] for k in ("item_id", "description", "extra")})
    snapshots = ingest_sources(data_config(first, second), tmp_path / "raw")
    assert [s.columns for s in snapshots] == [
        ("item_id", "label", "category", "price"),
        ("item_id", "description"),
    ]


def test_misspelt_declared_column_names_file_column_and_closest_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "items.csv", ROWS)
    data = data_config(path, columns={"categorical": ["category"], "text": ["descripton"]})
    error = ingest_error(data, tmp_path / "raw")
    message = str(error)
    assert str(path) in message
    assert "'descripton'" in message
    assert "did you mean 'description'" in message
    assert error.column == "descripton"


def test_declared_column_missing_from_every_source_names_every_file(tmp_path: Path) -> None:
    first = write_csv(tmp_path / "a.csv", {k: ROWS[k] for k in ("item_id", "label", "category")})
    second = write_csv(tmp_path / "b.csv", {k: ROWS[k] for k in ("item_id", "description")})
    error = ingest_error(data_config(first, second), tmp_path / "raw")
    assert "'price'" in str(error)
    assert str(first) in str(error) and str(second) in str(error)


def test_missing_id_column_fails(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "items.csv", {k: v for k, v in ROWS.items() if k != "item_id"})
    error = ingest_error(data_config(path), tmp_path / "raw")
    assert "id column 'item_id'" in str(error)
    assert str(path) in str(error)


def test_non_numeric_value_in_numeric_column_names_column_and_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "items.csv", {**ROWS, "price": ["1.5", "cheap", "3", "n/a!"]})
    error = ingest_error(data_config(path, on_bad_value="error"), tmp_path / "raw")
    assert error.column == "price"
    assert error.rows == [2, 4]
    assert "'price'" in str(error)
    assert "rows 2, 4" in str(error)
    assert "cheap" in str(error)


def test_empty_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("")
    error = ingest_error(data_config(path), tmp_path / "raw")
    assert "empty" in str(error)
    assert str(path) in str(error)


def test_header_only_csv_fails(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("item_id,label,category,price,description\n")
    error = ingest_error(data_config(path), tmp_path / "raw")
    assert "no rows" in str(error)
    assert str(path) in str(error)


def test_empty_jsonl_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text("")
    error = ingest_error(data_config(path), tmp_path / "raw")
    assert str(path) in str(error)


def test_missing_source_file_fails(tmp_path: Path) -> None:
    error = ingest_error(data_config(tmp_path / "absent.csv"), tmp_path / "raw")
    assert "not found" in str(error)


def test_unreadable_parquet_fails(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    path.write_text("item_id,label\n1,yes\n")
    error = ingest_error(data_config(path), tmp_path / "raw")
    assert "cannot read as parquet" in str(error)


def test_unknown_suffix_asks_for_a_format(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "items.txt", ROWS)
    error = ingest_error(data_config(path), tmp_path / "raw")
    assert "format" in str(error)


def test_declared_format_overrides_suffix(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "items.txt", ROWS)
    data = data_config(sources=[{"path": str(path), "format": "csv"}])
    assert [s.rows for s in ingest_sources(data, tmp_path / "raw")] == [4]


def test_failed_ingest_leaves_previous_snapshot_intact(tmp_path: Path) -> None:
    good = write_csv(tmp_path / "items.csv", ROWS)
    ingest_sources(data_config(good), tmp_path / "raw")
    before = {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()}
    bad = write_csv(tmp_path / "bad.csv", {**ROWS, "price": ["x"] * 4})
    ingest_error(data_config(bad, on_bad_value="error"), tmp_path / "raw")
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == before


def test_categories_read_one_way_whatever_the_format(tmp_path: Path) -> None:
    """`12345.0` from Parquet is `12345` as in CSV; spaces are dropped; a blank cell is missing."""
    frame = pd.DataFrame(
        {
            "item_id": ["1", "2", "3", "4"],
            "label": ["yes", "no", "yes ", "no"],
            "category": [12345.0, 7.0, None, 12.0],
            "price": [1.0, 2.0, 3.0, 4.0],
            "description": ["a", "b", "c", "d"],
        }
    )
    text = frame.assign(category=[" 12345 ", "7", "", "12"])
    paths = {"parquet": tmp_path / "t.parquet", "jsonl": tmp_path / "t.jsonl", "csv": tmp_path / "t.csv"}
    frame.to_parquet(paths["parquet"])
    frame.to_json(paths["jsonl"], orient="records", lines=True)
    text.to_csv(paths["csv"], index=False)
    seen = {}
    for fmt, path in paths.items():
        ingest_sources(data_config(path), tmp_path / f"raw-{fmt}")
        ((_, typed),) = read_snapshots(tmp_path / f"raw-{fmt}")
        seen[fmt] = (typed["category"].tolist(), typed["label"].tolist())
    expected = (["12345", "7", pd.NA, "12"], ["yes", "no", "yes", "no"])
    for fmt, values in seen.items():
        assert [str(v) for v in values[0]] == [str(v) for v in expected[0]], fmt
        assert values[1] == expected[1], fmt


# --- the params key in a missing-column error, and the target's type for prediction (issue 25) ---


def test_a_misspelt_column_names_its_params_key(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "items.csv", ROWS)
    data = data_config(path, columns={"categorical": ["category"], "text": ["descripton"]})
    message = str(ingest_error(data, tmp_path / "raw"))
    assert message == (
        f"file {path}; column 'descripton': declared as data.columns.text but in none of the sources; "
        "did you mean 'description'?"
    )


def test_every_missing_column_is_counted_in_the_one_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "items.csv", {k: v for k, v in ROWS.items() if k != "item_id"})
    data = data_config(path, columns={"categorical": ["categry"], "numeric": ["price"]})
    message = str(ingest_error(data, tmp_path / "raw"))
    assert "the id column 'item_id' (data.id) is missing" in message
    assert message.endswith("also missing: data.columns.categorical 'categry'")


@pytest.mark.parametrize(
    ("fmt", "labels", "expected"),
    [
        ("csv", [4, 0, 2, 4], "int"),
        ("csv", [True, False, True, False], "bool"),
        ("csv", ["yes", "no", "yes", "no"], "str"),
        ("parquet", [4.0, 0.0, 2.0, 4.0], "float"),  # stored as "4": ingest's one form of a label
        ("parquet", [0.5, 1.5, 0.5, 1.5], "float"),
        ("jsonl", ["4", "0", "2", "4"], "str"),  # digits, but written as strings
        ("jsonl", [4, 0, 2, 4], "int"),
    ],
)
def test_the_targets_type_in_the_source_reaches_the_align_summary(
    tmp_path: Path, fmt: str, labels: list, expected: str
) -> None:
    """Ingest keeps labels as strings; the type they had travels to align's summary (and on to the bundle)."""
    frame = pd.DataFrame({**ROWS, "label": labels})
    path = tmp_path / f"items.{fmt}"
    write_source(frame, path)
    data = data_config(path, task="multiclass")
    [snapshot] = ingest_sources(data, tmp_path / "raw")
    assert snapshot.target_type == expected
    [(_, table)] = read_snapshots(tmp_path / "raw")
    report = _align_report(data, table)
    assert report.target_type == expected


def _align_report(data: DataConfig, table: pd.DataFrame) -> AlignReport:
    """Align's report for `table` repeated to enough rows per class to split."""

    rows = pd.concat([table.assign(item_id=table["item_id"] + f"-{i}") for i in range(12)], ignore_index=True)
    rows.attrs = table.attrs
    return align(data, [("items", rows)])[1]
