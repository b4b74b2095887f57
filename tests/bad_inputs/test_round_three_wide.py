"""Round three of hostile input (issue 23), class 7: wide and deep inputs.

- Wide: 10,000 declared numeric columns by 200 rows went through ingest in 179 s with 25,879
  "DataFrame is highly fragmented" warnings, and align did not finish in 10 minutes: both
  added columns one at a time. Now they must take well under a minute together, warn nothing,
  and give the same table as a narrow run.
- Deep: a JSON-lines cell nested 1,000 levels deep raised RecursionError while the error
  message was being built (repr() of the cell). Every depth, from 1 to 100,000, in every role,
  must be a DataError naming the file and the row (or the line, where the JSON parser itself
  gives up), never a traceback.

Both run the stage functions the flows call (load_params, ingest_sources, align) on real files.
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks.config import load_params
from tasks.data.align import AlignReport, align
from tasks.data.ingest import ingest_sources, read_snapshots
from tasks.errors import DataError
from tasks.paths import Layout
from tasks.schema import PRESENT, SPLIT
from tests.bad_inputs.project import ROWS, Project

WIDE_COLUMNS, WIDE_ROWS = 10_000, 200
BUDGET_SECONDS = 60.0  # the bound for ingest + align on the reference 2-core machine
# The old code ran for more than 25 minutes here: stop it (the fixture is set up by the first
# test to run, and a failure there is reported by each test without running it again).
HANG = pytest.mark.timeout(2 * BUDGET_SECONDS, method="signal")


def ingest_and_align(root: Path) -> tuple[pd.DataFrame, AlignReport]:
    """The ingest and align stages, as their flows run them, in `root`."""
    with contextlib.chdir(root):
        params = load_params("params.yaml")
        layout = Layout()
        ingest_sources(params.data, layout.raw)
        return align(params.data, read_snapshots(layout.raw))


# --- wide ---------------------------------------------------------------------------------------


def write_wide(root: Path, columns: int, rows: int) -> list[str]:
    """A CSV of `columns` numeric columns (a few cells blank) and a binary label, and its params."""
    rng = np.random.default_rng(0)
    names = [f"n{i:05d}" for i in range(columns)]
    values = rng.normal(size=(rows, WIDE_COLUMNS)).round(3)  # the first `columns` of the same draw
    values[rng.random(values.shape) < 0.01] = np.nan
    values = values[:, :columns]
    frame = pd.DataFrame(values, columns=names)
    frame.insert(0, "label", np.where(np.arange(rows) % 2, "yes", "no"))
    frame.insert(0, "item_id", [f"i{n:04d}" for n in range(rows)])
    root.mkdir(parents=True)
    frame.to_csv(root / "items.csv", index=False)
    data = {
        "sources": [{"path": "items.csv"}],
        "id": "item_id",
        "target": "label",
        "task": "binary",
        "columns": {"numeric": names},
    }
    (root / "params.yaml").write_text(yaml.safe_dump({"data": data}))
    return names


Wide = tuple[list[str], pd.DataFrame, AlignReport, float, list]  # names, table, report, seconds, warnings


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Wide:
    root = tmp_path_factory.mktemp("wide") / "project"
    names = write_wide(root, WIDE_COLUMNS, WIDE_ROWS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.perf_counter()
        aligned, report = ingest_and_align(root)
        seconds = time.perf_counter() - started
    return names, aligned, report, seconds, caught


@HANG
def test_ten_thousand_columns_ingest_and_align_within_a_minute(wide: Wide) -> None:
    *_, seconds, _ = wide
    assert seconds < BUDGET_SECONDS, f"ingest + align took {seconds:.1f} s"


@HANG
def test_wide_ingest_and_align_warn_nothing(wide: Wide) -> None:
    *_, caught = wide
    assert [str(w.message)[:80] for w in caught] == []


@HANG
def test_wide_table_keeps_every_value_and_mask(wide: Wide) -> None:
    names, aligned, report, _, _ = wide
    assert list(aligned.columns[3 : 3 + len(names)]) == names
    assert list(aligned.columns[3 + len(names) :]) == [PRESENT + n for n in names]
    values = aligned[names].to_numpy()
    np.testing.assert_array_equal(aligned[[PRESENT + n for n in names]].to_numpy(), ~np.isnan(values))
    assert report.present == {n: int((~np.isnan(aligned[n])).sum()) for n in names}
    assert set(aligned[SPLIT]) == {"train", "val", "test"}


@HANG
def test_a_wide_table_aligns_as_a_narrow_one_does(wide: Wide, tmp_path: Path) -> None:
    """The first 20 columns alone give the same values, masks, counts and split."""
    names, aligned, report, _, _ = wide
    narrow_names = write_wide(tmp_path / "narrow", 20, WIDE_ROWS)
    assert narrow_names == names[:20]
    narrow, narrow_report = ingest_and_align(tmp_path / "narrow")
    keep = list(narrow.columns)
    pd.testing.assert_frame_equal(aligned[keep], narrow)
    assert {n: report.present[n] for n in narrow_names} == narrow_report.present
    assert {n: report.huge_values[n] for n in narrow_names} == narrow_report.huge_values


# --- deep ---------------------------------------------------------------------------------------

DEPTHS = [1, 10, 100, 1_000, 10_000, 100_000]
BAD_ROW = 1  # 0-based; the second line of the file
PLACEHOLDER = "@@nested@@"


def nested_json(kind: str, depth: int) -> str:
    """A JSON value `depth` containers deep, written as text (json.dumps would itself recurse)."""
    if kind == "list":
        return "[" * depth + '"x"' + "]" * depth
    return '{"a": ' * depth + '"x"' + "}" * depth


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("kind", ["list", "record"])
@pytest.mark.parametrize("column", ["title", "category", "price", "label", "item_id"])
def test_a_deeply_nested_json_cell_is_a_data_error_naming_its_row(
    tmp_path: Path, column: str, kind: str, depth: int
) -> None:
    project = Project(tmp_path / "project", fmt="jsonl")
    project.params["data"]["sources"] = [{"path": "items.jsonl"}]
    project.set(BAD_ROW, column, PLACEHOLDER)
    project.replace_bytes = (f'"{PLACEHOLDER}"'.encode(), nested_json(kind, depth).encode())
    project.write()
    with pytest.raises(DataError) as info:
        ingest_and_align(project.root)
    message = str(info.value)
    assert "items.jsonl" in message
    assert re.search(rf"\b(rows|line) {BAD_ROW + 1}\b", message), message
    assert len(message) < 1_000, message  # the cell is shown short, not in full


@pytest.mark.parametrize("depth", [1, 1_000, 100_000])
def test_a_deeply_nested_label_list_in_a_csv_cell_is_read_without_a_traceback(
    tmp_path: Path, depth: int
) -> None:
    """A multilabel CSV cell holding a JSON array nested past Python's recursion limit."""
    project = Project(tmp_path / "project")
    project.params["data"]["task"] = "multilabel"
    project.rows["label"] = [("red|blue", "blue", "green|red")[n % 3] for n in range(ROWS)]
    project.set(BAD_ROW, "label", nested_json("list", depth))
    project.write()
    aligned, _ = ingest_and_align(project.root)
    assert len(aligned) == ROWS
