"""Generated hostile input for the open-ended classes of issue 11: column names, path cells and
label spellings, each through the production ingest and align (the stages that judge them).

A FuselineError is a pass (we refused and said why); any other exception fails the test, and
so does an accepted input that broke a promise: a reserved name accepted, a path outside the
image root marked usable, or two spellings of one class kept apart.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.config import params_from_dict
from tasks.data.align import AlignReport, align
from tasks.data.ingest import ingest_sources, read_snapshots
from tasks.errors import ConfigError, FuselineError
from tasks.modalities.files import resolve_paths, resolve_under
from tasks.schema import RESERVED_NAMES, RESERVED_PREFIXES, TARGET

SETTINGS = settings(
    max_examples=int(os.environ.get("FUSELINE_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    derandomize="FUSELINE_PROPERTY_EXAMPLES" not in os.environ,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ROWS = 24

NAMES = st.one_of(
    st.text(min_size=0, max_size=40),
    st.sampled_from([*RESERVED_NAMES, "item_id", "label", " ", "a.b", "text.x", "price.1", "Unnamed: 0"]),
    st.builds(lambda p, s: p + s, st.sampled_from(RESERVED_PREFIXES), st.text(max_size=8)),
)


def _project(
    column: str, values: list[object], task: str = "binary", labels: list[str] | None = None
) -> dict:
    labels = labels if labels is not None else ["yes" if n % 2 else "no" for n in range(ROWS)]
    frame = pd.DataFrame(
        {"item_id": [f"i{n:02d}" for n in range(ROWS)], "label": labels, "price": range(ROWS)}
    )
    frame[column] = values
    return {"frame": frame, "task": task, "column": column}


def _run(project: dict, role: str, tmp: Path) -> tuple[pd.DataFrame, AlignReport]:
    """ingest -> align on a CSV written from the frame, in `tmp`."""
    columns = {"numeric": ["price"]}
    if project["column"] != "price" or role != "numeric":
        columns[role] = [*columns.get(role, []), project["column"]]
    raw = {
        "data": {
            "sources": [{"path": str(tmp / "items.csv")}],
            "id": "item_id",
            "target": "label",
            "task": project["task"],
            "columns": columns,
            "image_root": str(tmp),
        }
    }
    data = params_from_dict(raw).data
    project["frame"].to_csv(tmp / "items.csv", index=False)
    ingest_sources(data, tmp / "raw")
    return align(data, read_snapshots(tmp / "raw"))


@SETTINGS
@given(name=NAMES, role=st.sampled_from(["categorical", "numeric", "text"]))
def test_any_column_name_is_used_or_refused_in_words(name: str, role: str) -> None:
    values = [f"v{n % 3}" if role != "numeric" else float(n) for n in range(ROWS)]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            aligned, _ = _run(_project(name, values), role, Path(tmp))
        except FuselineError:
            return
    assert name.strip(), "a blank column name was accepted"
    assert name not in RESERVED_NAMES and not name.startswith(RESERVED_PREFIXES), (
        f"reserved {name!r} accepted"
    )
    assert aligned[f"present__{name}"].all(), aligned.columns.tolist()


PATHS = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        ["good.jpg", "../good.jpg", "/etc/passwd", "loop.jpg", "dir.jpg", "a\x00b.jpg", "~/x.jpg"]
    ),
    st.builds(lambda n: "A" * n, st.integers(200, 5000)),
    st.builds(
        lambda parts: "/".join(parts),
        st.lists(st.sampled_from(["..", ".", "sub", "good.jpg"]), max_size=6),
    ),
)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root") / "images"
    (root / "sub").mkdir(parents=True)
    (root / "good.jpg").write_bytes(b"x")
    (root / "sub" / "good.jpg").write_bytes(b"x")
    (root / "dir.jpg").mkdir()
    (root / "loop.jpg").symlink_to("loop.jpg")
    (root.parent / "good.jpg").write_bytes(b"outside")
    return root


@SETTINGS
@given(values=st.lists(st.one_of(st.none(), PATHS), min_size=1, max_size=8))
def test_any_path_cell_resolves_or_is_counted(values: list[str | None], image_root: Path) -> None:
    report = AlignReport()
    resolved = resolve_paths(pd.Series(values, dtype=object), image_root, "photo", report)
    usable = resolved.dropna()
    for relative in usable:
        full = (image_root / relative).resolve()
        assert full.is_file() and full.is_relative_to(image_root.resolve()), relative
    blank = sum(1 for v in values if v is None or not str(v).strip())
    counted = report.files_missing["photo"] + report.paths_refused["photo"]
    assert len(usable) + counted + blank == len(values)
    for value in values:
        assert resolve_under(value, image_root, image_root.resolve())[1] in (
            "ok",
            "empty",
            "missing",
            "refused",
        )


SPELLINGS = [
    "yes",
    "Yes",
    "YES",
    "yes ",
    " yes",
    "no",
    "No",
    "no\t",
    "",
    "  ",
    "NA",
    "None",
    "nan",
    "maybe",
]


@SETTINGS
@given(
    labels=st.lists(st.sampled_from(SPELLINGS), min_size=ROWS, max_size=ROWS),
    task=st.sampled_from(["binary", "multiclass"]),
)
def test_any_label_spelling_is_one_class_or_refused(labels: list[str], task: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.suppress(FuselineError):
            aligned, _ = _run(_project("colour", ["red"] * ROWS, task, labels), "categorical", Path(tmp))
            classes = set(aligned[TARGET])
            assert all(c == c.strip() and c for c in classes), classes
            assert len({c.casefold() for c in classes}) == len(classes), classes
            if "NA" in labels:
                assert "NA" in classes, "the class 'NA' became a missing value"


def test_reserved_names_are_refused_with_the_rule() -> None:
    with pytest.raises(ConfigError, match="present__photo.*fuseline's own"):
        params_from_dict(
            {
                "data": {
                    "sources": [{"path": "x.csv"}],
                    "id": "id",
                    "target": "y",
                    "task": "binary",
                    "columns": {"categorical": ["present__photo"]},
                }
            }
        )
