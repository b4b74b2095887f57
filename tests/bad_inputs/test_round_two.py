"""Round two of hostile input (issue 11), through the same pipeline as test_bad_inputs.py.

Grouped by the issue's classes; each case is one user mistake with the one outcome it must
have. Class 1 (predict outputs) and 7 (bundle integrity) need a trained bundle and live in
tests/tasks/serve/test_predict_output.py and tests/tasks/train/test_bundle_integrity.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tasks.errors import ConfigError, DataError
from tests.bad_inputs.pipeline import Encoders, Outcome
from tests.bad_inputs.project import ROWS, Project
from tests.bad_inputs.test_bad_inputs import (
    Case,
    Completes,
    Fails,
    both,
    cells,
    image,
    image_path,
    params,
    parquet_with,
    run_case,
)


def symlink_loop(path: Path) -> None:
    path.symlink_to(path.name)


def rename_column(old: str, new: str, role: str) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        project.rows[new] = project.rows.pop(old)
        project.params["data"]["columns"][role] = [new]

    return setup


def column_values(column: str, values: list[Any]) -> Callable[[Project], None]:
    return lambda project: project.rows.update({column: values})


def split_column(values: list[str]) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        project.rows["fold"] = values
        project.params["data"]["split"] = {"column": "fold"}

    return setup


def second_source(ids: list[str]) -> Callable[[Project], None]:
    """A second table with a new categorical column, joined on the id."""

    def setup(project: Project) -> None:
        pd.DataFrame({"item_id": ids, "colour": ["red", "blue"] * (len(ids) // 2)}).to_csv(
            project.root / "extra.csv", index=False
        )
        project.params["data"]["sources"].append({"path": "extra.csv"})
        project.params["data"]["columns"]["categorical"] = ["category", "colour"]

    return setup


def classes_are(*expected: str) -> Callable[[Outcome, Encoders], None]:
    def check(outcome: Outcome, encoders: Encoders) -> None:
        assert tuple(outcome.features.classes) == expected, outcome.features.classes

    return check


def value_kept(column: str, value: str, row: int) -> Callable[[Outcome, Encoders], None]:
    def check(outcome: Outcome, encoders: Encoders) -> None:
        aligned = outcome.aligned.set_index("row_id")
        assert aligned.loc[f"i{row:02d}", column] == value
        assert aligned.loc[f"i{row:02d}", f"present__{column}"]

    return check


def multilabel_empty_row(outcome: Outcome, encoders: Encoders) -> None:
    aligned = outcome.aligned.set_index("row_id")
    assert aligned.loc["i02", "target"] == "[]"
    assert set(outcome.features.classes) == {"a", "b"}


NUMERIC_IDS = [f"{n:04d}" for n in range(ROWS)]
HALF = ROWS // 2

CASES = [
    # 2. path-like cells never crash path resolution: refused or missing, counted
    Case(
        "image-cell-base64-blob",
        image_path(0, "iVBORw0KGgo" + "A" * 1125),  # 1,136 characters: ENAMETOOLONG
        Completes(report={"paths_refused": {"photo": 1}}, absent=((0, "photo"),), present=((1, "photo"),)),
    ),
    Case(
        "image-symlink-loop",
        image(0, "loop.jpg", symlink_loop),
        Completes(report={"files_missing": {"photo": 1}}, absent=((0, "photo"),)),
    ),
    Case(
        "image-path-with-nul-byte-from-parquet",
        parquet_with("photo", ["p00\x00.jpg"] + [f"p{n:02d}.jpg" for n in range(1, ROWS)]),
        Completes(report={"paths_refused": {"photo": 1}}, absent=((0, "photo"),)),
    ),
    # 3. internal column names are reserved, refused when params are read
    Case(
        "categorical-named-present__photo",
        rename_column("category", "present__photo", "categorical"),
        Fails("params", ConfigError, ("present__photo", "fuseline's own")),
    ),
    Case(
        "numeric-named-sha256__photo",
        rename_column("price", "sha256__photo", "numeric"),
        Fails("params", ConfigError, ("sha256__photo", "fuseline's own")),
    ),
    Case(
        "text-named-__wide__",
        rename_column("title", "__wide__", "text"),
        Fails("params", ConfigError, ("__wide__", "fuseline gives its own column")),
    ),
    # 4. what would fail at evaluate fails at align, naming the column
    Case(
        "split-column-without-test-rows",
        split_column(["train"] * 30 + ["val"] * 10),
        Fails("align", DataError, ("the test split has no rows", "'fold'"), column="fold"),
    ),
    Case(
        "numeric-column-all-nan",
        column_values("price", [None] * ROWS),
        Fails("align", DataError, ("no train row has a usable value", "numeric"), column="price"),
    ),
    Case(
        "text-column-all-blank",
        column_values("title", ["  "] * ROWS),
        Fails("align", DataError, ("no train row has a usable value", "text"), column="title"),
    ),
    Case(
        "image-column-without-usable-image",
        column_values("photo", ["nope.jpg"] * ROWS),
        Fails("align", DataError, ("no train row has a usable value", "files missing 40"), column="photo"),
    ),
    Case(
        "class-only-in-test-split",
        both(
            params("data.task", "multiclass"),
            column_values("label", ["a", "b"] * 18 + ["c"] * 4),
            split_column(["train"] * 30 + ["val"] * 5 + ["test"] * 5),
        ),
        Fails("align", DataError, ("classes ['c'] have no train rows",), column="label"),
    ),
    # 5. no silent data surprises
    Case(
        "csv-column-twice-in-header",
        lambda p: setattr(p, "replace_bytes", (b"photo\n", b"photo,price\n")),
        Fails("ingest", DataError, ("items.csv", "'price' more than once"), column="price"),
    ),
    Case(
        "class-named-NA",
        column_values("label", ["NA", "EU"] * HALF),
        Completes(check=classes_are("EU", "NA")),
    ),
    Case(
        "categorical-values-NA-and-None-are-values",
        cells((0, "category", "NA"), (1, "category", "None")),
        Completes(check=value_kept("category", "NA", 0)),
    ),
    Case(
        "label-case-variants",
        cells((1, "label", "Yes"), (3, "label", "yes ")),
        Fails("align", DataError, ("differ only in letter case", "'Yes' / 'yes'"), column="label"),
    ),
    Case(
        "label-with-trailing-space-is-the-same-class",
        cells((1, "label", "yes "), (3, "label", " yes")),
        Completes(check=classes_are("no", "yes")),
    ),
    Case(
        "empty-string-class-from-parquet",
        parquet_with("label", [""] + ["yes" if n % 2 else "no" for n in range(1, ROWS)]),
        Fails("align", DataError, ("1 rows have no target",), rows=("i00",)),
    ),
    Case(
        "ids-with-leading-zeros-in-one-source",
        both(column_values("item_id", NUMERIC_IDS), second_source([str(n) for n in range(ROWS)])),
        Fails(
            "align",
            DataError,
            ("extra.csv", "40 ids match items.csv only when written alike", "'0000' there"),
            column="item_id",
        ),
    ),
    Case(
        "second-source-ids-match-nothing",
        second_source([f"x{n}" for n in range(ROWS)]),
        Fails("align", DataError, ("extra.csv", "none of its 40 ids"), column="item_id"),
    ),
    Case(
        "regression-target-constant",
        both(params("data.task", "regression"), column_values("label", [5.0] * ROWS)),
        Fails("align", DataError, ("nothing to learn",), column="label"),
    ),
    # 6. config values that used to pass validation and fail later
    Case(
        "params-negative-train-seed", params("train.seed", -1), Fails("params", ConfigError, ("train.seed",))
    ),
    Case(
        "params-negative-split-seed",
        params("data.split.seed", -1),
        Fails("params", ConfigError, ("data.split.seed", "greater than or equal to 0")),
    ),
    Case(
        "params-misspelt-text-encoder",
        params("encoders.text.model", "minilmm"),
        Fails("params", ConfigError, ("encoders.text.model", "did you mean 'minilm'")),
    ),
    Case(
        "params-misspelt-image-encoder",
        params("encoders.image.model", "efficientnet_lite00"),
        Fails("params", ConfigError, ("encoders.image.model", "'efficientnet_lite0'")),
    ),
    Case(
        "params-text-encoder-directory-missing",
        params("encoders.text.model", "./models/my-bert"),
        Fails("params", ConfigError, ("encoders.text.model", "does not exist")),
    ),
    Case(
        "multilabel-empty-cell-is-a-row-without-labels",
        both(params("data.task", "multilabel"), column_values("label", ["a|b", "a", "", "b"] * (ROWS // 4))),
        Completes(check=multilabel_empty_row),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_round_two(case: Case, tmp_path: Path, encoders: Encoders) -> None:
    run_case(case, tmp_path, encoders)
