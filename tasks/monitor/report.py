"""What a monitor run tells a person: drift.json, drift.md, drift.png and the Prefect table rows.

The files are written atomically (tasks/atomic.py), so a dashboard or a later run never
reads half a report. The figure draws every check's effect as a share of its threshold,
so checks on different scales (PSI, AUC, shares) share one axis with the threshold at 1.
Column names, category values and paths reach drift.md through `tasks.escape.text` and every
table cell through `tasks.escape.cell`; the figure's labels through `tasks.escape.figure`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tasks import escape
from tasks.atomic import write_bytes, write_json, write_text
from tasks.config import DriftThresholds
from tasks.evaluate.figures import to_png
from tasks.monitor.checks import Check
from tasks.monitor.history import summary_line

JSON_NAME, MARKDOWN_NAME, FIGURE_NAME = "drift.json", "drift.md", "drift.png"
_BAR_CELLS = 10  # width of the text bars in the Markdown table (the threshold at 5 cells)
_SEVERITY_SHOWN = 4.0  # the figure's axis ends here; larger values are drawn clipped and labelled


@dataclass
class DriftReport:
    """Every check of one run, and where each side came from."""

    checks: list[Check]
    reference: str  # e.g. "140 train rows of data/aligned/aligned.parquet"
    batch: str  # e.g. "200 rows of new.csv"
    model: str | None  # the bundle whose predictions were compared; None: inputs only
    thresholds: DriftThresholds
    notes: list[str] = field(default_factory=list)  # what was skipped, and why
    performance: dict[str, Any] | None = None  # the model's record in performance.json (history.py)

    @property
    def drifted(self) -> bool:
        return any(check.drifted for check in self.checks)

    def drifted_columns(self) -> list[str]:
        """Columns with at least one drifted check, in report order."""
        return list(OrderedDict.fromkeys(check.column for check in self.checks if check.drifted))

    def headline(self, show: Callable[[str], str] = str) -> str:
        """One sentence; `show` renders each name or path in it (e.g. `escape.text` for Markdown)."""
        columns = self.drifted_columns()
        if not columns:
            checked = f"{len(self.checks)} checks of {show(self.batch)}"
            return f"No drift in {checked} against {show(self.reference)}"
        return f"Drift in {len(columns)} column(s): {', '.join(map(show, columns))}"

    def column_lines(self) -> list[str]:
        """One line per drifted column naming its largest drifted effect, e.g. for the CLI."""
        lines = []
        for column in self.drifted_columns():
            drifted = [c for c in self.checks if c.column == column and c.drifted]
            worst = max(drifted, key=lambda c: c.severity)
            lines.append(f"{column} ({worst.role}): {_sentence(worst)}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "drifted_columns": self.drifted_columns(),
            "headline": self.headline(),
            "reference": self.reference,
            "batch": self.batch,
            "model": self.model,
            "thresholds": self.thresholds.model_dump(),
            "notes": self.notes,
            "column_lines": self.column_lines(),
            "checks": [check.to_json() for check in self.checks],
            "performance": self.performance,
        }

    def table(self) -> list[dict[str, Any]]:
        """Rows for the Prefect table artifact (fixed key: the UI keeps each run's version)."""
        cell = escape.table_value
        return [
            {
                "column": cell(c.column), "role": c.role, "aspect": c.aspect, "test": c.test,
                "p_value": _finite(c.p_value), "p_adjusted": _finite(c.p_adjusted), "effect": c.effect,
                "score": _finite(c.score),
                "threshold": c.threshold, "drifted": c.drifted, "detail": cell(c.detail),
            }
            for c in self.checks
        ]  # fmt: skip

    def markdown(self) -> str:
        verdict = "**Drift detected**" if self.drifted else "No drift"
        t = self.thresholds
        text = escape.text
        lines = [
            f"# {self.headline(text)}",
            "",
            f"- verdict: {verdict}",
            f"- reference: {text(self.reference)}",
            f"- batch: {text(self.batch)}",
            f"- model: {text(self.model) if self.model else 'none (input drift only)'}",
            f"- rule: a check is drift when p < {t.alpha:g} (Holm-adjusted over the run's {self._tests()} "
            "checks) and its effect reaches its threshold "
            f"(PSI {t.psi:g}, domain AUC {t.auc:g}, missing share {t.missing:g}, unseen share {t.unseen:g})",
            *[f"- note: {text(note)}" for note in self.notes],
            *self._performance_lines(),
            "",
            *[f"- **{text(line)}**" for line in self.column_lines()],
            "",
            "| column | role | check | test | p | p adjusted | effect | threshold | vs threshold | drift "
            "| detail |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in sorted(self.checks, key=lambda c: (-c.drifted, -c.severity)):
            cells = [
                text(c.column), c.role, c.aspect, c.test, f"{c.p_value:.3g}", f"{c.p_adjusted:.3g}",
                f"{c.effect} {c.score:.3f}", f"{c.threshold:g}", f"`{_bar(c.severity)}`",
                "yes" if c.drifted else "", text(c.detail),
            ]  # fmt: skip
            lines.append("| " + " | ".join(map(escape.cell, cells)) + " |")
        return "\n".join(lines) + "\n"

    def _performance_lines(self) -> list[str]:
        """The model's latest numbers (performance.json keeps every run's; performance.png draws them)."""
        if self.performance is None:
            return []
        record, text = self.performance, escape.text
        notes = [f"- performance note: {text(note)}" for note in record.get("notes", [])]
        return [f"- performance: {text(summary_line(record))}", *notes]

    def _tests(self) -> int:
        """Checks that ran a test (Holm adjusts those); schema findings are none."""
        return sum(1 for check in self.checks if check.aspect != "schema")

    def figure(self) -> Figure:
        """Horizontal bars: each check's effect relative to its threshold (1.0), red where drifted."""
        checks = sorted(self.checks, key=lambda c: c.severity)
        height = max(2.5, 0.28 * len(checks) + 1.2)
        figure = Figure(figsize=(7.5, height))
        ax = figure.add_subplot()
        values = [min(max(c.severity, 0.0), _SEVERITY_SHOWN) for c in checks]
        colours = [_colour(c) for c in checks]
        positions = range(len(checks))
        ax.barh(positions, values, color=colours)
        names = [f"{escape.figure(c.column)} · {c.aspect}" for c in checks]
        ax.set_yticks(list(positions), names, fontsize=8)
        for y, (value, check) in enumerate(zip(values, checks, strict=True)):
            ax.text(value + 0.03, y, f"{check.effect} {check.score:.3g}", va="center", fontsize=7)
        ax.axvline(1.0, color="black", ls="--", lw=1)
        ax.set_xlim(0, _SEVERITY_SHOWN + 0.6)
        ax.set_xlabel("effect / threshold (1 = threshold; red: drift; orange: over it, adjusted p >= alpha)")
        ax.set_title(escape.figure(self.headline(), limit=80), fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
        return figure


def write_report(report: DriftReport, out_dir: Path) -> dict[str, str]:
    """drift.json, drift.md and drift.png under `out_dir`, each replaced atomically; their paths."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in (JSON_NAME, MARKDOWN_NAME, FIGURE_NAME)}
    write_json(_json_safe(report.to_json()), paths[JSON_NAME])
    write_text(report.markdown(), paths[MARKDOWN_NAME])
    write_bytes(to_png(report.figure()), paths[FIGURE_NAME])
    return {name: str(path) for name, path in paths.items()}


def _sentence(check: Check) -> str:
    if check.aspect == "schema":  # a finding, not a test (tasks/monitor/schema.py)
        return f"schema: {check.detail}"
    return (
        f"{check.aspect} {check.effect} {check.score:.3f} >= {check.threshold:g} "
        f"({check.test} p {check.p_value:.2g}, adjusted {check.p_adjusted:.2g}); {check.detail}"
    )


def _bar(severity: float) -> str:
    """A text bar (the threshold is the middle), readable in the Prefect UI's Markdown."""
    filled = max(0, min(_BAR_CELLS, round(severity * _BAR_CELLS / 2)))
    return "█" * filled + "·" * (_BAR_CELLS - filled)


def _colour(check: Check) -> str:
    if check.drifted:
        return "tab:red"
    return "tab:orange" if check.severity >= 1.0 else "tab:grey"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null: strict JSON readers refuse them."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
