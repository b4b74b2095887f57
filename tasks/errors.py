"""Errors that fuseline raises on purpose.

Every failure a user can cause (a bad params key, a missing column, a broken file) is
one of these, so callers and tests can tell "your input is wrong" from "our code is wrong".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


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
            where.append(f"column {column!r}")
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows[:5])
            more = f" (and {len(self.rows) - 5} more)" if len(self.rows) > 5 else ""
            where.append(f"rows {shown}{more}")
        prefix = "; ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class BundleError(FuselineError):
    """A model bundle is missing, incompatible with the encoders at hand, or unsafe to load."""


def closest_names(name: str, candidates: Iterable[str]) -> str:
    """A 'did you mean' suffix, because a misspelt column is the most common config error."""
    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""
