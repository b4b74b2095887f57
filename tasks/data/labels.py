"""Multilabel targets: reading a list-valued cell, and its one canonical form in aligned.parquet.

Users write label lists in whatever their format allows: a real list in Parquet or JSON
lines, a JSON array or "a|b|c" in a CSV cell. By the time a cell reaches align it may also
be the text form of a list (ingest stores targets as strings: "['a', 'b']" for a Python
list, "['a' 'b']" for a NumPy array). Every form becomes a sorted, duplicate-free JSON array
string, so aligned.parquet has one plain string column, DVC diffs stay readable, and later
stages need no guessing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from tasks.errors import DataError

SEPARATOR = "|"
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


def parse_labels(value: object) -> list[str]:
    """The labels in one target cell (possibly none); see the module docstring for the forms."""
    if isinstance(value, list | tuple | np.ndarray):
        return _clean(str(item) for item in value)
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return []  # an empty cell: a row with no labels (README)
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = json.loads(text)
            if isinstance(parsed, list):
                return _clean(str(item) for item in parsed)
        except (json.JSONDecodeError, RecursionError):  # nested past Python's limit: read as text
            pass
        inner = text[1:-1]
        quoted = [single or double for single, double in _QUOTED.findall(inner)]
        return _clean(quoted if quoted else re.split(r"[,\s]+", inner))
    return _clean(text.split(SEPARATOR))


def canonical(value: object) -> str:
    """The aligned form: a JSON array of sorted, distinct labels."""
    return json.dumps(parse_labels(value))


def from_canonical(text: str) -> list[str]:
    return [str(label) for label in json.loads(text)]


def _clean(labels: Iterable[str]) -> list[str]:
    return sorted({label.strip() for label in labels if label.strip()})


def check_label_sets(target: pd.Series, column: str) -> None:
    """A multilabel target needs at least two distinct labels over all rows to learn anything."""
    distinct = {label for value in target for label in parse_labels(value)}
    if len(distinct) < 2:
        raise DataError(
            f"a multilabel target needs at least 2 distinct labels, found {sorted(distinct)}", column=column
        )
    refuse_case_variants(distinct, column)


def refuse_case_variants(labels: Iterable[str], column: str) -> None:
    """`yes` and `Yes` as two classes is almost always a typo that would split one class in two.

    Not merged silently: which spelling is right is the user's call, so the error lists them.
    """
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(label.casefold(), []).append(label)
    variants = [sorted(group) for group in groups.values() if len(group) > 1]
    if variants:
        shown = "; ".join(" / ".join(repr(v) for v in group) for group in sorted(variants)[:5])
        raise DataError(
            f"classes that differ only in letter case: {shown}; write each class one way", column=column
        )
