"""reports/leaderboard.csv as `fuseline leaderboard` prints it.

Kept apart from the evaluation code (and its torch and scikit-learn imports), so printing a
table that evaluate already wrote costs a pandas import, not a model library's.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from tasks.errors import DataError

# One row per trained model; `val` and `test` are `metric` (evaluate.metric), the same on every row.
COLUMNS = ["model", "role", "weight", "val", "test", "seconds", "metric"]
_DECIMALS = {"weight": 2, "val": 3, "test": 3, "seconds": 1}


def read_leaderboard(path: Path) -> pd.DataFrame:
    """The table evaluate wrote; a missing or unreadable file is one DataError naming it."""
    if not path.is_file():
        raise DataError(
            "no leaderboard here: evaluate has not run in this project "
            "(run `dvc repro`, `fuseline run` or `fuseline stage evaluate` first)",
            file=str(path),
        )
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(
            f"unreadable leaderboard ({type(err).__name__}); rerun evaluate", file=str(path)
        ) from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"not a leaderboard: columns {missing} are missing; rerun evaluate", file=str(path))
    return frame[COLUMNS]


def format_leaderboard(frame: pd.DataFrame) -> str:
    """A plain-text table in evaluate's order (best test score first), headed by the metric.

    Names are left-aligned and numbers right-aligned at fixed decimals, blank where a model has
    none (no ensemble weight), so the columns read down like a terminal table should.
    """
    metric = str(frame["metric"].iloc[0]) if len(frame) else "?"
    headers = {"val": f"val {metric}", "test": f"test {metric}", "seconds": "train s"}
    columns = []
    for name in COLUMNS[:-1]:  # every column but `metric`, which the headers name
        if name in _DECIMALS:
            cells = [_number(v, _DECIMALS[name]) for v in frame[name]]
        else:
            cells = ["" if pd.isna(v) else str(v) for v in frame[name]]
        columns.append((headers.get(name, name), cells, name in _DECIMALS))
    lines = []
    for row in range(-1, len(frame)):
        parts = []
        for header, cells, numeric in columns:
            width = max(len(header), *(len(c) for c in cells)) if cells else len(header)
            text = header if row < 0 else cells[row]
            parts.append(text.rjust(width) if numeric else text.ljust(width))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _number(value: object, decimals: int) -> str:
    """A number to fixed decimals; blank where there is none (a model with no ensemble weight)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return f"{number:.{decimals}f}" if math.isfinite(number) else ""
