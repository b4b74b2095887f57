"""Every kind of bad input the reliability issue lists, through ingest -> align -> extract ->
train -> predict, each with the one outcome it must have.

A case spoils one thing in an otherwise valid 40-row project and expects either
`Fails(stage, error, ...)`: one of our own errors, at that stage, whose message names what a
user needs (file, column, rows, count, key), or
`Completes(...)`: the run finishes with finite predictions, and the documented fallback
happened and was counted in the align summary.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.data.align import ID, PRESENT, SPLIT
from tasks.errors import ConfigError, DataError, FuselineError
from tests.bad_inputs import imagefiles as images
from tests.bad_inputs.pipeline import Encoders, Outcome, run_pipeline
from tests.bad_inputs.project import ROWS, Project, row_id

HUGE_JPEG = images.once(images.huge_jpeg)
HUGE_PNG = images.once(images.huge_png)
LONG_TEXT = "word " * 20_000  # 100,000 characters


@dataclass(frozen=True)
class Fails:
    stage: str
    error: type[FuselineError]
    says: tuple[str, ...] = ()  # fragments the message must contain
    rows: tuple[Any, ...] | None = None  # the error's rows must start with these
    column: str | None = None


@dataclass(frozen=True)
class Completes:
    report: dict[str, Any] = field(default_factory=dict)  # expected entries of summary.json (subsets)
    absent: tuple[tuple[int, str], ...] = ()  # (row, column) that must end up absent
    present: tuple[tuple[int, str], ...] = ()  # (row, column) that must still be present
    check: Callable[[Outcome, Encoders], None] | None = None


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Project], None]
    expect: Fails | Completes
    marks: tuple[Any, ...] = ()


def cells(*edits: tuple[int, str, Any]) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        for row, column, value in edits:
            project.set(row, column, value)

    return setup


def params(path: str, value: Any) -> Callable[[Project], None]:
    """Set `value` at a dotted path of params.yaml (creating mappings on the way)."""

    def setup(project: Project) -> None:
        *parents, last = path.split(".")
        node = project.params
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return setup


def both(*setups: Callable[[Project], None]) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        for step in setups:
            step(project)

    return setup


def image(row: int, name: str, writer: images.Writer) -> Callable[[Project], None]:
    return lambda project: project.image(row, name, writer)


def image_path(row: int, value: str) -> Callable[[Project], None]:
    return cells((row, "photo", value))


# --- checks used by several completing cases --------------------------------------------------


def pixel_of(name: str) -> Callable[[Outcome, Encoders], None]:
    """The image decoded to the colour a person sees (white behind transparency, 16-bit scaled)."""
    expected = {
        "cmyk.jpg": (255, 0, 0),
        "palette.png": (255, 255, 255),
        "alpha.png": (255, 255, 255),
        "gray16.png": (128, 128, 128),
        "one.png": (10, 200, 30),
    }[name]

    def check(outcome: Outcome, encoders: Encoders) -> None:
        from tasks.images import load_square_rgb

        pixels = load_square_rgb(outcome.root / outcome.params.data.image_root / name, 8)
        assert tuple(int(v) for v in pixels[4, 4]) == pytest.approx(expected, abs=2)

    return check


def long_text_is_truncated(outcome: Outcome, encoders: Encoders) -> None:
    from tasks.modalities.text import encode_sorted_texts

    vector = outcome.features.inputs["text.title"][_position(outcome, 0)]
    max_length = outcome.params.encoders.text.max_length
    head = encode_sorted_texts(encoders.text, [LONG_TEXT[:1000]], max_length, 8, _cpu())[0][0]
    np.testing.assert_allclose(vector, head, atol=1e-5)  # only the first max_length tokens count


def scaling_ignores_huge(outcome: Outcome, encoders: Encoders) -> None:
    tabular = outcome.features.inputs["tabular"]
    price = tabular[:, -2]  # [.., price, price:missing]
    ordinary = np.delete(price, _position(outcome, 0))
    assert ordinary.std() > 0.5, "one huge value squashed every other price to the same number"


def unseen_go_to_unknown(outcome: Outcome, encoders: Encoders) -> None:
    aligned = outcome.aligned.set_index(ID)
    odd = [row_id(n) for n in range(8)]
    in_train = set(aligned.loc[odd][aligned.loc[odd, SPLIT] == "train"].index)
    expected = sum(1 for r in odd if r not in in_train)
    assert outcome.report.unseen_categories == {"category": expected}
    assert expected > 0, "the split put every odd category in train; the case tests nothing"


def replaced_bytes_kept_the_row(outcome: Outcome, encoders: Encoders) -> None:
    title = outcome.aligned.set_index(ID).loc[row_id(0), "title"]
    assert title == "caf\ufffd cup"


def _encoded(outcome: Outcome, row: int, column: str) -> bool | None:
    """Whether extraction produced an embedding for the cell (None: not a text/image column)."""
    for block in (f"text.{column}", f"image.{column}"):
        if block in outcome.features.present:
            return bool(outcome.features.present[block][_position(outcome, row)])
    return None


def _position(outcome: Outcome, row: int) -> int:
    return int(np.flatnonzero(outcome.features.ids == row_id(row))[0])


def _cpu() -> Any:
    import torch

    return torch.device("cpu")


# --- the table ------------------------------------------------------------------------------------


def parquet_with(column: str, values: list[Any]) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        project.fmt = "parquet"
        project.params["data"]["sources"][0]["path"] = "items.parquet"
        frame = pd.DataFrame(project.rows)
        frame[column] = values
        project.frame = frame

    return setup


def outside_files(project: Project) -> None:
    images.rgb_jpeg()(project.root / "outside.jpg")


CASES = [
    # columns
    Case(
        "column-missing",
        params("data.columns.numeric", ["weight"]),
        Fails(
            "ingest",
            DataError,
            ("items.csv", "'weight'", "in none of the sources", "the columns are 'category'"),
            column="weight",
        ),
    ),
    Case(
        "column-misspelt",
        params("data.columns.text", ["titel"]),
        Fails("ingest", DataError, ("items.csv", "'titel'", "did you mean 'title'"), column="titel"),
    ),
    Case(
        "id-column-misspelt",
        params("data.id", "itemid"),
        Fails("ingest", DataError, ("items.csv", "'itemid'", "did you mean 'item_id'"), column="itemid"),
    ),
    Case(
        "parquet-list-in-numeric",
        parquet_with("price", [[1.0, 2.0]] * ROWS),
        Fails("ingest", DataError, ("items.parquet", "'price'", "nested values"), rows=(1, 2, 3)),
    ),
    Case(
        "parquet-struct-in-text",
        parquet_with("title", [{"en": "cup"}] * ROWS),
        Fails("ingest", DataError, ("items.parquet", "'title'", "nested values"), column="title"),
    ),
    Case(
        "parquet-timestamp-as-numeric",
        parquet_with("price", pd.date_range("2024-01-01", periods=ROWS)),
        Fails("ingest", DataError, ("items.parquet", "'price'", "datetime64"), column="price"),
    ),
    # ids and target
    Case(
        "duplicate-ids",
        cells((5, "item_id", "i03"), (9, "item_id", "i03")),
        Fails("align", DataError, ("items.csv", "1 ids occur more than once (3 rows)"), rows=("i03",)),
    ),
    Case(
        "missing-ids",
        cells((4, "item_id", None), (7, "item_id", "  ")),
        Fails("align", DataError, ("items.csv", "2 rows have no id"), rows=(5, 8)),
    ),
    Case(
        "target-nan",
        cells((2, "label", None), (6, "label", None)),
        Fails("align", DataError, ("2 rows have no target",), rows=("i02", "i06"), column="label"),
    ),
    Case(
        "class-too-rare",
        both(params("data.task", "multiclass"), cells((0, "label", "rare"), (1, "label", "rare"))),
        Fails("align", DataError, ("class 'rare' has 2 rows",), rows=("i00", "i01")),
    ),
    Case(
        "binary-with-three-classes",
        cells((0, "label", "maybe"), (2, "label", "maybe"), (4, "label", "maybe")),
        Fails("align", DataError, ("exactly 2 classes, found 3",)),
    ),
    Case(
        "regression-target-not-a-number",
        both(
            params("data.task", "regression"),
            lambda p: p.rows.update(label=[float(n) for n in range(ROWS)]),
            cells((3, "label", "lots")),
        ),
        Fails("ingest", DataError, ("items.csv", "'label'", "'lots'"), rows=(4,)),
    ),
    # images that cannot be used become absent, counted
    Case(
        "image-file-does-not-exist",
        image_path(0, "nope.jpg"),
        Completes({"files_missing": {"photo": 1}}, absent=((0, "photo"),)),
    ),
    Case(
        "image-empty-file",
        image(0, "empty.jpg", images.empty),
        Completes({"files_undecodable": {"photo": 1}}, absent=((0, "photo"),)),
    ),
    Case(
        "image-not-an-image",
        image(0, "text.jpg", images.not_an_image),
        Completes({"files_undecodable": {"photo": 1}}, absent=((0, "photo"),)),
    ),
    Case(
        "image-postscript-never-run",
        image(0, "eps.jpg", images.postscript),
        Completes({"files_undecodable": {"photo": 1}}, absent=((0, "photo"),)),
    ),
    Case(
        "image-truncated",
        image(0, "half.jpg", images.truncated_jpeg),
        Completes({"files_undecodable": {"photo": 1}}, absent=((0, "photo"),)),
    ),
    Case(
        "image-corrupt",
        image(0, "crc.png", images.corrupt_png),
        Completes({"files_undecodable": {"photo": 1}}, absent=((0, "photo"),)),
    ),
    Case(
        "image-huge-png-refused-undecoded",
        image(0, "huge.png", HUGE_PNG),
        Completes({"files_undecodable": {"photo": 1}}, absent=((0, "photo"),)),
        marks=(pytest.mark.slow,),
    ),
    Case(
        "image-bad-with-on_bad_image-error",
        both(image(3, "half.jpg", images.truncated_jpeg), params("data.on_bad_image", "error")),
        Fails("align", DataError, ("half.jpg", "cannot be decoded", "'photo'"), rows=("i03",)),
    ),
    # images that can be decoded are converted
    Case(
        "image-one-pixel",
        image(0, "one.png", images.one_pixel),
        Completes({"files_undecodable": {"photo": 0}}, present=((0, "photo"),), check=pixel_of("one.png")),
    ),
    Case(
        "image-huge-jpeg-decoded-scaled",
        image(0, "huge.jpg", HUGE_JPEG),
        Completes({"files_undecodable": {"photo": 0}}, present=((0, "photo"),)),
        marks=(pytest.mark.slow,),
    ),
    Case(
        "image-cmyk",
        image(0, "cmyk.jpg", images.cmyk_jpeg),
        Completes(present=((0, "photo"),), check=pixel_of("cmyk.jpg")),
    ),
    Case(
        "image-palette-transparency",
        image(0, "palette.png", images.palette_with_transparency),
        Completes(present=((0, "photo"),), check=pixel_of("palette.png")),
    ),
    Case(
        "image-16-bit",
        image(0, "gray16.png", images.gray16_png),
        Completes(present=((0, "photo"),), check=pixel_of("gray16.png")),
    ),
    Case(
        "image-alpha",
        image(0, "alpha.png", images.rgba_png),
        Completes(present=((0, "photo"),), check=pixel_of("alpha.png")),
    ),
    # image paths that leave image_root are refused, never opened
    Case(
        "image-path-dotdot",
        both(outside_files, image_path(0, "../outside.jpg")),
        Completes({"paths_refused": {"photo": 1}}, absent=((0, "photo"),)),
    ),
    Case(
        "image-path-etc-passwd",
        image_path(0, "../../etc/passwd"),
        Completes({"paths_refused": {"photo": 1}}, absent=((0, "photo"),)),
    ),
    Case(
        "image-path-absolute",
        lambda p: (outside_files(p), p.set(0, "photo", str(p.root / "outside.jpg"))),
        Completes({"paths_refused": {"photo": 1}}, absent=((0, "photo"),)),
    ),
    Case(
        "image-symlink-out",
        lambda p: (
            outside_files(p),
            p.image(0, "link.jpg", lambda path: os.symlink(p.root / "outside.jpg", path)),
        ),
        Completes({"paths_refused": {"photo": 1}}, absent=((0, "photo"),)),
    ),
    # A named pipe outside the root: opening it to read would block until the timeout.
    Case(
        "image-symlink-to-fifo-never-opened",
        lambda p: (
            os.mkfifo(p.root / "pipe"),
            p.image(0, "pipe.jpg", lambda path: os.symlink(p.root / "pipe", path)),
        ),
        Completes({"paths_refused": {"photo": 1}}, absent=((0, "photo"),)),
        marks=(pytest.mark.timeout(300),),
    ),
    Case(
        "image-url-not-fetched",
        image_path(0, "http://127.0.0.1:9/a.jpg"),
        Completes({"files_missing": {"photo": 1}}, absent=((0, "photo"),)),
    ),
    # text: encoded without error
    Case(
        "text-empty-and-whitespace",
        cells((0, "title", ""), (1, "title", "  \t ")),
        Completes({"present": {"title": ROWS - 2}}, absent=((0, "title"), (1, "title"))),
    ),
    Case(
        "text-100k-characters",
        cells((0, "title", LONG_TEXT)),
        Completes(present=((0, "title"),), check=long_text_is_truncated),
    ),
    Case(
        "text-emoji-and-right-to-left",
        cells((0, "title", "🙂🚀 كوب أحمر ‏שלום"), (1, "title", "\u202etxet")),
        Completes(present=((0, "title"), (1, "title"))),
    ),
    Case(
        "text-non-utf8-bytes",
        both(cells((0, "title", "caf@ cup")), lambda p: setattr(p, "replace_bytes", (b"caf@", b"caf\xe9"))),
        Completes(
            {"replaced_bytes": {"title": 1}}, present=((0, "title"),), check=replaced_bytes_kept_the_row
        ),
    ),
    # numbers and categories
    Case(
        "numeric-strings-made-missing",
        cells((0, "price", "cheap"), (1, "price", "1,5")),
        Completes({"bad_values": {"price": 2}}, absent=((0, "price"), (1, "price"))),
    ),
    Case(
        "numeric-strings-with-on_bad_value-error",
        both(cells((0, "price", "cheap"), (1, "price", "1,5")), params("data.on_bad_value", "error")),
        Fails("ingest", DataError, ("items.csv", "'price'", "'cheap'", "2 values"), rows=(1, 2)),
    ),
    Case(
        "numeric-inf",
        cells((0, "price", math.inf), (1, "price", -math.inf)),
        Completes({"bad_values": {"price": 2}}, absent=((0, "price"), (1, "price"))),
    ),
    Case(
        "numeric-huge",
        cells((0, "price", 1e308)),
        Completes({"huge_values": {"price": 1}}, present=((0, "price"),), check=scaling_ignores_huge),
    ),
    Case(
        "categorical-unseen-at-predict",
        cells(*((n, "category", f"odd-{n}") for n in range(8))),
        Completes(check=unseen_go_to_unknown),
    ),
    # source files
    Case(
        "source-empty-file",
        lambda p: setattr(p, "source_bytes", b""),
        Fails("ingest", DataError, ("items.csv", "empty")),
    ),
    Case(
        "source-header-only",
        lambda p: setattr(p, "source_bytes", b"item_id,label,category,price,title,photo\n"),
        Fails("ingest", DataError, ("items.csv", "no rows")),
    ),
    Case(
        "source-ragged-csv",
        lambda p: setattr(p, "source_bytes", b"item_id,label\n1,yes\n2,no,extra,fields\n"),
        Fails("ingest", DataError, ("items.csv", "cannot read as csv")),
    ),
    Case(
        "source-is-a-directory",
        lambda p: (p.params["data"]["sources"].append({"path": "more.csv"}), (p.root / "more.csv").mkdir()),
        Fails("ingest", DataError, ("more.csv", "directory")),
    ),
    Case(
        "source-parquet-not-parquet",
        lambda p: (
            p.params["data"]["sources"][0].update(path="items.parquet"),
            setattr(p, "source_bytes", b"PAR1 not really"),
        ),
        Fails("ingest", DataError, ("items.parquet", "cannot read as parquet")),
    ),
    # params.yaml
    Case(
        "params-unknown-key",
        params("train.lrr", 0.1),
        Fails("params", ConfigError, ("train.lrr", "unknown key")),
    ),
    Case("params-wrong-type", params("train.epochs", "ten"), Fails("params", ConfigError, ("train.epochs",))),
    Case(
        "params-negative-lr",
        params("train.lr", -0.01),
        Fails("params", ConfigError, ("train.lr", "greater than 0")),
    ),
    Case(
        "params-infinite-lr",
        params("train.lr", math.inf),
        Fails("params", ConfigError, ("train.lr", "finite")),
    ),
    Case(
        "params-fractions-not-summing-to-1",
        params("data.split.fractions", {"train": 0.6, "val": 0.2, "test": 0.1}),
        Fails("params", ConfigError, ("data.split.fractions", "sum to 1")),
    ),
    Case(
        "params-bad-switch-value",
        params("data.on_bad_image", "skip"),
        Fails("params", ConfigError, ("data.on_bad_image", "'error' or 'missing'")),
    ),
    Case(
        "params-image-root-missing",
        params("data.image_root", "no/such/dir"),
        Fails("align", ConfigError, ("data.image_root", "no/such/dir")),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, encoders: Encoders) -> None:
    run_case(case, tmp_path, encoders)


def run_case(case: Case, tmp_path: Path, encoders: Encoders) -> None:
    """Write the spoiled project, run it, and check the one outcome the case expects."""
    project = Project(tmp_path / "project")
    case.setup(project)
    project.write()
    stages: list[str] = []
    if isinstance(case.expect, Fails):
        _expect_failure(case.expect, project, encoders, stages)
    else:
        _expect_completion(case.expect, run_pipeline(project.root, encoders, stages), encoders)


def _expect_failure(expect: Fails, project: Project, encoders: Encoders, stages: list[str]) -> None:
    with pytest.raises(FuselineError) as info:
        run_pipeline(project.root, encoders, stages)
    error = info.value
    assert isinstance(error, expect.error), f"{type(error).__name__}: {error}"
    assert stages[-1] == expect.stage, f"failed in {stages[-1]}, expected {expect.stage}: {error}"
    for fragment in expect.says:
        assert fragment in str(error), f"{fragment!r} not in: {error}"
    if expect.rows is not None:
        assert isinstance(error, DataError) and error.rows is not None, str(error)
        assert tuple(error.rows[: len(expect.rows)]) == expect.rows, str(error)
    if expect.column is not None:
        assert getattr(error, "column", None) == expect.column, str(error)


def _expect_completion(expect: Completes, outcome: Outcome, encoders: Encoders) -> None:
    summary = asdict(outcome.report)
    for key, value in expect.report.items():
        got = {k: summary[key].get(k) for k in value} if isinstance(value, dict) else summary[key]
        assert got == value, f"summary[{key!r}] = {summary[key]!r}, expected {value!r}"
    aligned = outcome.aligned.set_index(ID)
    for row, column in expect.absent:
        assert not aligned.loc[row_id(row), PRESENT + column], f"{row_id(row)}.{column} should be absent"
        assert _encoded(outcome, row, column) in (False, None), f"{row_id(row)}.{column} was encoded"
    for row, column in expect.present:
        assert aligned.loc[row_id(row), PRESENT + column], f"{row_id(row)}.{column} should be present"
        assert _encoded(outcome, row, column) in (True, None), f"{row_id(row)}.{column} was not encoded"
    if expect.check is not None:
        expect.check(outcome, encoders)
