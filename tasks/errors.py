"""Errors that fuseline raises on purpose.

Every failure a user can cause (a bad params key, a missing column, a broken file) is
one of these, so callers and tests can tell "your input is wrong" from "our code is wrong".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import numpy as np

PREVIEW = 60  # characters of a user's value shown in a message
_DEPTH = 3  # container levels a preview opens; deeper ones show as [...]


class FuselineError(Exception):
    """Base class: a problem with the user's input or environment, explained in words."""


class ConfigError(FuselineError):
    """params.yaml is malformed; the message names the key path."""


class DataError(FuselineError):
    """A data file is unusable; the message names the file and, where known, row and column."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        rows: Sequence[object] | None = None,
        column: str | None = None,
    ) -> None:
        self.file = file
        self.rows = list(rows) if rows is not None else None
        self.column = column
        where = []
        if file is not None:
            where.append(f"file {file}")
        if column is not None:
            where.append(f"column {preview(column)}")
        if self.rows:
            shown = ", ".join(plain(r) for r in self.rows[:5])
            more = f" (and {len(self.rows) - 5} more)" if len(self.rows) > 5 else ""
            where.append(f"rows {shown}{more}")
        prefix = "; ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class BundleError(FuselineError):
    """A model bundle is missing, incompatible with the encoders at hand, or unsafe to load."""


def preview(value: object, limit: int = PREVIEW) -> str:
    """repr() of a user's value for a message: at most `limit` characters, whatever the value.

    A cell can be a list nested 100,000 levels deep (repr() recurses past Python's limit, so
    the error itself raised RecursionError) or a 100 MB string (repr() copies all of it). This
    opens at most 3 levels of containers and reads only as many items and characters as it shows.
    """
    text = _preview(value, _DEPTH, limit + 1)
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def plain(value: object, limit: int = PREVIEW) -> str:
    """str() of a row id or number, as messages list them, cut to `limit`; anything else previewed."""
    if isinstance(value, str | int | float):
        text = value[: limit + 1] if isinstance(value, str) else str(value)
        return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."
    return preview(value, limit)


def _preview(value: object, depth: int, budget: int) -> str:
    """At least `budget` characters of the value's repr when it has them; never more than depth levels."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        value = value.item()  # 1.5, not np.float64(1.5)
    if isinstance(value, str | bytes | bytearray):
        return repr(value[:budget])
    if isinstance(value, dict):
        items = ((_preview(k, 0, budget), _preview(v, depth - 1, budget)) for k, v in value.items())
        return _bracketed("{", (f"{k}: {v}" for k, v in items), "}", depth, budget, bool(value))
    if isinstance(value, list | tuple | set | frozenset | np.ndarray):
        items = (_preview(item, depth - 1, budget) for item in value)
        return _bracketed("[", items, "]", depth, budget, len(value) != 0)
    try:
        return repr(value)[:budget]
    except Exception:  # an object whose repr fails: its type still says something
        return f"<{type(value).__name__}>"


def _bracketed(opening: str, items: Iterable[str], closing: str, depth: int, budget: int, full: bool) -> str:
    """Items between brackets, stopping once `budget` characters are written; `...` below depth 0."""
    if depth <= 0:
        return f"{opening}...{closing}" if full else opening + closing
    shown: list[str] = []
    used = 0
    for item in items:
        if used > budget:
            shown.append("...")
            break
        shown.append(item)
        used += len(item) + 2
    return opening + ", ".join(shown) + closing


def closest_names(name: str, candidates: Iterable[str]) -> str:
    """A 'did you mean' suffix, because a misspelt column is the most common config error."""
    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""
