"""The served model's performance over time: one record per monitor run, a file and a figure.

Each run appends its record to `monitor.output`/performance.json (a JSON list, oldest first)
and redraws performance.png from the whole list, so a person sees the model's health week
by week: the estimate as a line, realized values as points with their interval, the
reference level (the model on its own held-out rows) as a band, runs that found drift in
red, and a dotted line where the watched model changed. The read-modify-write holds a lock
on the directory's `.performance.lock` (two runs at once cannot drop each other's record)
and replaces the file atomically (tasks/atomic.py). A history that cannot be read is moved
aside, not overwritten, and the new list starts from this run.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tasks import escape
from tasks.atomic import write_bytes, write_json
from tasks.evaluate.figures import to_png
from tasks.monitor.performance import Performance

HISTORY_NAME, FIGURE_NAME = "performance.json", "performance.png"
_LOCK_NAME = ".performance.lock"
_TABLE_ROWS = 200  # the most recent runs shown in the Prefect table artifact
_TICKS = 8


def history_record(
    performance: Performance,
    model: str,
    version: str,
    digest: str,
    drifted: bool,
    when: datetime | None = None,
) -> dict[str, Any]:
    """One run's record: when, which model (path, version, digest), the batch and its numbers."""
    stamp = (when or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    return {"time": stamp, "model": model, "version": version, "digest": digest, "drifted": drifted} | asdict(
        performance
    )


def append_record(record: dict[str, Any], out_dir: Path) -> list[dict[str, Any]]:
    """The history with `record` appended, written back atomically under the directory's lock."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / HISTORY_NAME
    with _locked(out_dir / _LOCK_NAME):
        records = _read_history(path, record)
        records.append(record)
        write_json(_json_safe(records), path)
    return records


def write_history_figure(records: list[dict[str, Any]], out_dir: Path) -> Path:
    """performance.png under `out_dir`, replaced atomically."""
    path = Path(out_dir) / FIGURE_NAME
    write_bytes(to_png(history_figure(records)), path)
    return path


def _read_history(path: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The records so far; an unreadable file is renamed aside (and `record` notes where)."""
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_bytes().decode("utf-8"))
        if isinstance(records, list) and all(isinstance(r, dict) for r in records):
            return records
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        pass
    aside = path.with_name(f"{path.name}.unreadable-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}")
    path.replace(aside)
    record.setdefault("notes", []).append(f"{path} was unreadable: moved to {aside.name}, history restarted")
    return []


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX flock); where there is none, no lock."""
    try:
        import fcntl
    except ImportError:  # not POSIX: runs on one machine rarely overlap; the write stays atomic
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- what a person reads ------------------------------------------------------------------


def summary_line(record: dict[str, Any]) -> str:
    """One line of the latest numbers, e.g. for the CLI and drift.md."""
    metric = record["metric"]
    parts = []
    if record.get("realized") is not None:
        parts.append(
            f"realized {record['realized']:.3f} [{_num(record.get('low'))}, {_num(record.get('high'))}] "
            f"on {record['labeled_rows']} labelled rows"
        )
    else:
        parts.append(f"no labels yet (0 of {record['batch_rows']} rows)")
    if record.get("estimate") is not None:
        parts.append(f"estimated {record['estimate']:.3f} (CBPE)")
    if record.get("reference") is not None:
        parts.append(f"reference {record['reference']:.3f} on held-out rows")
    return f"{metric}: " + "; ".join(parts)


def history_markdown(records: list[dict[str, Any]], figure: str) -> str:
    """The latest run's numbers, how they were got, and where the figure is."""
    latest = records[-1]
    text = escape.text
    lines = [
        f"# Model performance: {text(summary_line(latest))}",
        "",
        f"- model: {text(latest['version'])} ({escape.code(latest['digest'])}) {text(latest['model'])}",
        f"- batch: {latest['batch_rows']} rows, {latest['labeled_rows']} labelled",
        f"- calibration of the estimate: {text(latest['calibration'])}",
        "- realized: the primary metric on the labelled rows, 95 % percentile bootstrap interval",
        *[f"- note: {text(note)}" for note in latest.get("notes", [])],
        f"- runs recorded: {len(records)}",
        "",
        f"Figure: {escape.code(figure)}",
    ]
    return "\n".join(lines) + "\n"


def history_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the Prefect table artifact: the latest runs, oldest first."""
    keys = ("metric", "estimate", "realized", "low", "high", "reference", "batch_rows", "labeled_rows")
    return [
        {"time": r["time"], "model": escape.table_value(r.get("version", "")), "drifted": r.get("drifted")}
        | {key: r.get(key) for key in keys}
        for r in records[-_TABLE_ROWS:]
    ]


def history_figure(records: list[dict[str, Any]]) -> Figure:
    """Estimate (line), realized (points, interval bars), reference (band) per run, over time."""
    figure = Figure(figsize=(8.0, 3.8))
    ax = figure.add_subplot()
    x = np.arange(len(records))
    estimate, realized = _series(records, "estimate"), _series(records, "realized")
    low, high = _series(records, "low"), _series(records, "high")
    ref_low, ref_high = _series(records, "reference_low"), _series(records, "reference_high")
    band = {"step": "mid", "color": "tab:green", "alpha": 0.15}
    ax.fill_between(x, ref_low, ref_high, label="reference (held-out rows)", **band)
    ax.plot(x, _series(records, "reference"), color="tab:green", lw=1, ls=":", drawstyle="steps-mid")
    ax.plot(x, estimate, marker="o", ms=4, color="tab:blue", label="estimated (CBPE)")
    errors = np.vstack([realized - low, high - realized])
    errors = np.where(np.isfinite(errors), np.maximum(errors, 0), 0)
    ax.errorbar(x, realized, yerr=errors, fmt="s", ms=5, color="black", capsize=3, label="realized (95 % CI)")
    drifted = np.array([bool(r.get("drifted")) for r in records], dtype=bool)
    shown = np.where(np.isfinite(estimate), estimate, realized)
    ring = {"s": 80, "facecolors": "none", "edgecolors": "tab:red"}
    ax.scatter(x[drifted], shown[drifted], label="drift detected", **ring)
    _model_changes(ax, records)
    _time_ticks(ax, records)
    metric = str(records[-1]["metric"]) if records else ""
    ax.set(ylabel=escape.figure(metric), xlabel="monitor run (UTC date)")
    ax.set_title(escape.figure(f"Served model's {metric} over time", limit=80), fontsize=10)
    ax.grid(True, alpha=0.3)
    if records:  # beside the axes: inside, it would hide the latest runs
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def _series(records: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([_float(r.get(key)) for r in records], dtype=np.float64)


def _model_changes(ax: Any, records: list[dict[str, Any]]) -> None:
    """A dotted line, named by the new version and digest, where the watched model changed."""
    for i in range(1, len(records)):
        if records[i].get("digest") != records[i - 1].get("digest"):
            ax.axvline(i - 0.5, color="grey", ls=":", lw=1)
            new = records[i]
            label = escape.figure(f"{new.get('version', '')} {str(new.get('digest'))[:7]}", limit=30)
            ax.text(i - 0.45, 0.02, label, transform=ax.get_xaxis_transform(), fontsize=7, va="bottom")


def _time_ticks(ax: Any, records: list[dict[str, Any]]) -> None:
    """Run positions, labelled by date (at most _TICKS of them, so labels stay readable)."""
    if not records:
        return
    ticks = np.unique(np.linspace(0, len(records) - 1, min(len(records), _TICKS)).round().astype(int))
    ax.set_xticks(ticks, [_date(records[i]["time"]) for i in ticks], fontsize=7, rotation=30)
    ax.set_xlim(-0.6, len(records) - 0.4)


def _date(stamp: str) -> str:
    """2025-03-01T02:00:00+00:00 -> 2025-03-01 02:00 (one line, even for a stamp edited by hand)."""
    match = re.match(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})", str(stamp))
    return f"{match[1]} {match[2]}" if match else escape.figure(stamp, limit=16)


def _num(value: Any) -> str:
    number = _float(value)
    return f"{number:.3f}" if math.isfinite(number) else "n/a"


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null: strict JSON readers refuse them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
