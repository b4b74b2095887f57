"""Issue 23, class 4: labels and names from the data drawn into figures, Markdown and logs.

Class labels, column names and category values are open-ended, so the cases come from a
generator: a fixed list of known-hostile strings (`$$` broke `dvc repro` at evaluate with a
mathtext ParseException; a backtick plus `<script>` left live HTML in report.md) and seeded
random strings built from every character some medium gives a meaning. They go through the
functions evaluate and monitor use (`flows.evaluate._draw`, `render_report`, `write_report`),
with real Agg rendering to PNG and the Markdown parsed by markdown-it (CommonMark + GFM tables).
"""

from __future__ import annotations

import html
import io
import random
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from markdown_it import MarkdownIt
from PIL import Image

from flows.evaluate import _draw, _json_safe
from tasks import escape
from tasks.config import DataConfig, DriftThresholds
from tasks.data.align import PRESENT, SPLIT, TARGET
from tasks.evaluate.evaluation import contributions_table, metrics_report, plot_tables
from tasks.evaluate.importance import feature_groups, permutation_importance, weights_by_group
from tasks.evaluate.report import ReportInputs, data_summary, render_report
from tasks.monitor.checks import judge
from tasks.monitor.report import DriftReport, write_report
from tasks.monitor.statistics import categorical_drift
from tasks.paths import Layout
from tasks.schema import reserved_reason
from tasks.scores.model_names import FUSED
from tasks.train.dataset import FeatureSet

KNOWN = (
    "$", "$$", "$$$", "$$$$", "$x^2$", "$\\frac{1}{0}$", "\\", "\\$", "$\\", "`", "```", "a``b",
    "<script>alert(1)</script>", "x` <script>alert(1)</script> `", "|", "a|b", "\\|", "line\nbreak",
    "\r\n# forged heading", "_", "_hidden", "%", "%s %d", "naïve 日本 🙂", "\u202eevil", " ", "\t", "",
    "x" * 5000, "&amp;", "**bold**", "[x](javascript:alert(1))", "<!-- open comment",
)  # fmt: skip
# Everything a figure, Markdown, HTML, a table or a terminal reads as more than a character.
FRAGMENTS = (
    "$", "$$", "\\", "`", "``", "<", ">", "&", "|", "_", "%", "^", "{", "}", "#", "*", "[", "]",
    "(", ")", "!", "~", "\n", "\r", "\t", "\x1b[31m", "\u202e", "\u200b", "é", "日本", "🙂", " ",
    "script", "<script>", "mathrm", "x",
)  # fmt: skip
CHUNK = 15  # classes per evaluate run: every confusion cell is annotated up to 15


def hostile_labels(generated: int = 27, seed: int = 23) -> list[str]:
    """The known cases, then seeded random strings of 1-6 fragments; unique, in order."""
    rng = random.Random(seed)
    made = ("".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 6))) for _ in range(generated))
    return list(dict.fromkeys([*KNOWN, *made]))


LABELS = hostile_labels()
CHUNKS = [LABELS[i : i + CHUNK] for i in range(0, len(LABELS), CHUNK)]
_MARKDOWN = MarkdownIt("commonmark").enable("table")
_MARKDOWN_TAGS = {"h1", "h2", "h3", "p", "ul", "li", "strong", "em", "code", "img", "br", "hr"} | {
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip


def _is_drawn(png: bytes) -> bool:
    """A real PNG that is not one flat colour."""
    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image.convert("L"))
    return min(pixels.shape) > 100 and pixels.std() > 5


def _columns(labels: list[str]) -> list[str]:
    """The labels that may name a feature column (config refuses blank and reserved names)."""
    return [label for label in labels if reserved_reason(label) is None]


def _test_rows(labels: list[str], seed: int = 0) -> tuple[FeatureSet, np.ndarray]:
    """Test rows of a multiclass task with these classes and one text block per column name."""
    rng = np.random.default_rng(seed)
    n = 6 * len(labels)
    blocks = {f"text.{column}": rng.normal(size=(n, 3)).astype(np.float32) for column in _columns(labels)}
    rows = FeatureSet(
        ids=np.array([f"r{i}" for i in range(n)]),
        split=np.full(n, "test"),
        target=(np.arange(n) % len(labels)).astype(np.float32),
        inputs=blocks,
        present={block: np.ones(n, dtype=bool) for block in blocks},
        classes=tuple(labels),
    )
    return rows, rng.dirichlet(np.ones(len(labels)), size=n)


def _evaluate_outputs(labels: list[str], workdir: Path) -> tuple[dict[str, bytes], str]:
    """What evaluate draws and writes for a model with these classes: PNGs and report.md."""
    test, prediction = _test_rows(labels)
    rows = {"train": 0, "val": 0, "test": len(test.ids)}
    report = metrics_report("multiclass", test.target, {FUSED: prediction}, {}, rows, resamples=20)
    tables = plot_tables("multiclass", test, prediction)
    groups = feature_groups({block: 3 for block in test.inputs}, None)
    tables["importance.csv"] = permutation_importance(lambda r: float(r.target.mean()), test, groups, 2)
    tables["contributions.csv"] = contributions_table(report)
    names = np.asarray(test.classes)[test.target.astype(int)]
    weights = pd.DataFrame(np.full((len(names), len(test.inputs)), 0.5), columns=list(test.inputs))
    weights_table = weights_by_group(weights, names)
    coords = np.random.default_rng(1).normal(size=(len(names), 2))
    metric = report["primary_metric"]
    pngs = _draw("multiclass", metric, tables, Layout(workdir), test, coords, "PCA", weights_table)
    data = _data_config(labels)
    inputs = ReportInputs(
        metrics=report,
        data=data,
        summary=data_summary(_aligned(data, names), data),
        head="concat",
        sklearn={},
        contributions=tables["contributions.csv"],
        importance=tables["importance.csv"],
        block_weights=weights_table,
        figures=list(pngs),
        embedding_method="PCA",
    )
    return pngs, render_report(inputs)


def _data_config(labels: list[str]) -> DataConfig:
    columns = _columns(labels)
    return DataConfig.model_validate(
        {
            "sources": [{"path": "items.csv"}],
            "id": "item id",
            "target": columns[0] if columns else "label",
            "task": "multiclass",
            "columns": {"text": columns[1:] or ["note"]},
        }
    )


def _aligned(data: DataConfig, names: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({TARGET: names, SPLIT: "test"})
    for column in data.columns.all():
        frame[PRESENT + column] = True
    return frame


def _rendered(markdown: str) -> str:
    return _MARKDOWN.render(markdown)


def _code_spans(rendered: str) -> set[str]:
    return {html.unescape(code) for code in re.findall(r"<code>(.*?)</code>", rendered, re.S)}


def _live_tags(rendered: str) -> set[str]:
    """Tags Markdown itself does not make: HTML from a label that reached the page as markup."""
    tags = {tag.lower() for tag in re.findall(r"<\s*/?\s*([!a-zA-Z][-\w]*)", rendered)}
    return tags - _MARKDOWN_TAGS


@pytest.fixture(scope="module", params=range(len(CHUNKS)), ids=lambda i: f"labels{i}")
def evaluated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    labels = CHUNKS[request.param]
    yield labels, *_evaluate_outputs(labels, tmp_path_factory.mktemp("render"))


def test_the_generator_covers_every_fragment_and_the_reported_labels() -> None:
    assert {"$", "$$", "$$$", "$$$$"} <= set(LABELS) and len(LABELS) > len(KNOWN) + 20
    assert all(any(fragment in label for label in LABELS) for fragment in FRAGMENTS)


def test_every_figure_evaluate_draws_renders_hostile_labels(evaluated: tuple) -> None:
    _, pngs, _ = evaluated
    assert {"confusion.png", "embedding.png", "block_weights.png", "importance.png"} <= set(pngs)
    assert all(_is_drawn(png) for png in pngs.values())


def test_report_md_has_no_live_html(evaluated: tuple) -> None:
    _, _, markdown = evaluated
    assert _live_tags(_rendered(markdown)) == set()


def test_report_md_shows_each_label_and_column_intact_in_a_closed_code_span(evaluated: tuple) -> None:
    labels, _, markdown = evaluated
    spans = _code_spans(_rendered(markdown))
    missing = [label for label in labels if escape.visible(label) not in spans and label.strip(" ")]
    assert missing == []


def test_report_md_keeps_every_table_row_in_its_columns(evaluated: tuple) -> None:
    """A `|` from a label would add a cell (dropped by GFM): the counts follow their class."""
    labels, _, markdown = evaluated
    rendered = _rendered(markdown)
    balance = rendered.split("Class balance")[1].split("</table>")[0]
    rows = re.findall(r"<tr>\s*<td><code>(.*?)</code></td>\s*<td>(\d+)</td>", balance, re.S)
    expected = [escape.visible(label) or " " for label in labels]  # an empty label: a one-space span
    assert sorted(html.unescape(label) for label, _ in rows) == sorted(expected)


def test_the_positive_class_line_is_safe() -> None:
    labels = ["no", "x` <script>alert(1)</script> `$$"]
    test, prediction = _test_rows(labels)
    rows = {"train": 0, "val": 0, "test": len(test.ids)}
    report = metrics_report("binary", test.target, {FUSED: prediction[:, 1]}, {}, rows, resamples=20)
    report["positive_class"] = labels[1]
    data = _data_config(["<b>target</b>", "note"]).model_copy(update={"task": "binary"})
    inputs = ReportInputs(
        metrics=report,
        data=data,
        summary=data_summary(_aligned(data, np.asarray(labels)[test.target.astype(int)]), data),
        head="concat",
        sklearn={},
        contributions=contributions_table(report),
    )
    rendered = _rendered(render_report(inputs))
    assert _live_tags(rendered) == set() and "<b>" not in rendered
    assert {labels[1], f"prob_{labels[1]}", "<b>target</b>"} <= _code_spans(rendered)


def _drift_report(names: list[str]) -> DriftReport:
    """One categorical check per name, its values hostile too, so `detail` quotes them."""
    rng = np.random.default_rng(0)
    checks = []
    for name in names:
        values = [name, "<other>", "$$", "a|b"]
        reference = list(rng.choice(values, size=60, p=[0.7, 0.1, 0.1, 0.1]))
        batch = list(rng.choice(values, size=60, p=[0.1, 0.1, 0.1, 0.7]))
        checks.append(
            judge(name, "categorical", "distribution", categorical_drift(reference, batch), DriftThresholds())
        )
    return DriftReport(
        checks, "60 train rows of <script>.parquet", "60 rows of new`|.csv", None, DriftThresholds()
    )


@pytest.mark.parametrize("chunk", range(len(CHUNKS)), ids=lambda i: f"labels{i}")
def test_monitor_report_files_render_hostile_columns(chunk: int, tmp_path: Path) -> None:
    names = _columns(CHUNKS[chunk])
    files = write_report(_drift_report(names), tmp_path)
    rendered = _rendered(Path(files["drift.md"]).read_text())
    assert _is_drawn(Path(files["drift.png"]).read_bytes())
    assert _live_tags(rendered) == set()
    body = rendered.split("<tbody>")[1]
    cells = [html.unescape(c) for c in re.findall(r"<tr>\s*<td>(.*?)</td>", body, re.S)]
    assert sorted(cells) == sorted(escape.visible(n).strip() for n in names)


def test_the_promotion_artifact_quotes_registry_and_error_text_safely() -> None:
    """The version comes back from the registry's current.json; a reason may quote an error."""
    from flows.deploy import _markdown

    result = {
        "outcome": "kept", "version": "<script>alert(1)</script>", "metric": "auc", "candidate": 0.5,
        "current": 0.6, "reason": "x` <img src=x onerror=alert(1)> `$$", "stages_rerun": ["train", "<i>"],
        "seconds": 1.0, "same_rows": None,
    }  # fmt: skip
    assert _live_tags(_rendered(_markdown(result))) == set()


def test_table_artifact_cells_open_no_tag_and_stay_on_one_line() -> None:
    """The rows evaluate and monitor publish as Prefect tables (the older UI reads cells as Markdown)."""
    rows = _json_safe([{"feature": label, "importance": float("nan")} for label in LABELS])
    rows += _drift_report(_columns(LABELS)).table()
    cells = [value for row in rows for value in row.values() if isinstance(value, str)]
    assert len(cells) > 2 * len(LABELS)
    assert all("<" not in cell and cell.isprintable() for cell in cells)


@pytest.mark.parametrize("label", LABELS, ids=range(len(LABELS)))
def test_a_label_in_a_log_line_stays_on_one_printable_line(label: str) -> None:
    line = f"drift: {escape.log(label)}"
    assert line.isprintable() and "\n" not in line


def test_figure_labels_are_short_and_printable() -> None:
    shown = [escape.figure(label) for label in LABELS]
    assert all(len(s) <= escape.FIGURE_LIMIT and s.isprintable() for s in shown)
    assert escape.figure("_hidden", legend=True) == " _hidden" and escape.figure("", legend=True) == " "
