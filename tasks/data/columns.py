"""Which configured columns the sources lack, named by their params key, with the closest real name.

A misspelt column (`Descripton` for `Description`) is the most common mistake in a new
params.yaml. `fuseline check` finds every one from the sources' headers alone (no rows read)
and ingest refuses the first with the same words, so the user reads the key to edit, the
file that was searched and the name they probably meant.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from tasks.config import DataConfig
from tasks.data.sources import read_columns
from tasks.errors import DataError, preview

SHOWN_COLUMNS = 12  # columns listed when no name is close


@dataclass(frozen=True)
class MissingColumn:
    """One configured column no source has (the id: one source lacking it)."""

    key: str  # params key: data.id, data.target, data.columns.text, data.split.group
    column: str
    files: tuple[str, ...]  # the sources searched
    hint: str  # "; did you mean 'Description'?" or "; the columns are ..."

    @property
    def is_id(self) -> bool:
        return self.key == "data.id"

    def line(self) -> str:
        """What `fuseline check` prints: key, column, files, suggestion."""
        files = ", ".join(self.files)
        where = f"is not in {files}" if self.is_id else f"is in none of the sources ({files})"
        return f"{self.key}: column {preview(self.column)} {where}{self.hint}"

    def error(self) -> DataError:
        """What ingest raises: the DataError form (file and column first) of the same line."""
        what = (
            f"the id column {preview(self.column)} ({self.key}) is missing"
            if self.is_id
            else (f"declared as {self.key} but in none of the sources")
        )
        return DataError(f"{what}{self.hint}", file=", ".join(self.files), column=self.column)


def declared_columns(data: DataConfig) -> list[tuple[str, str]]:
    """(params key, column) of every column the sources must provide besides the id."""
    pairs = [("data.target", data.target)]
    columns = data.columns
    pairs += [(f"data.columns.{role}", c) for role in columns.roles() for c in getattr(columns, role)]
    pairs += [(f"data.split.{key}", c) for key in ("column", "group") if (c := getattr(data.split, key))]
    return pairs


def missing_columns(data: DataConfig, found: list[tuple[str, Collection[str]]]) -> list[MissingColumn]:
    """Every configured column absent from the sources, given each source's (path, column names).

    The id must be in every source (the sources are joined on it); any other column in one.
    """
    missing = [
        MissingColumn("data.id", data.id, (path, ), hint(data.id, names))
        for path, names in found
        if data.id not in names
    ]  # fmt: skip
    available = {str(name) for _, names in found for name in names}
    files = tuple(path for path, _ in found)
    missing += [
        MissingColumn(key, column, files, hint(column, available))
        for key, column in declared_columns(data)
        if column not in available
    ]
    return missing


def source_column_problems(data: DataConfig) -> list[MissingColumn]:
    """`missing_columns` from the sources' headers (tasks/data/sources.read_columns): no rows read.

    Nothing is checked while a source does not exist yet (the demo stage writes it): a column
    found only in that source would be reported missing. The sources must be regular files
    (tasks/preflight.check_sources runs first).
    """
    if not all(Path(source.path).exists() for source in data.sources):
        return []
    wanted = {data.id, *(column for _, column in declared_columns(data))}
    return missing_columns(data, [(source.path, read_columns(source, wanted)) for source in data.sources])


def refuse_missing_columns(data: DataConfig, found: list[tuple[str, Collection[str]]]) -> None:
    """Ingest's check: the first missing column as a DataError, naming how many more there are."""
    missing = missing_columns(data, found)
    if not missing:
        return
    first = missing[0]
    if len(missing) > 1:
        others = ", ".join(f"{m.key} {preview(m.column)}" for m in missing[1:])
        first = MissingColumn(first.key, first.column, first.files, f"{first.hint}; also missing: {others}")
    raise first.error()


def hint(name: str, columns: Iterable[str]) -> str:
    """ "; did you mean 'X'?" for the closest names (ignoring case), else the columns there are."""
    columns = sorted(str(c) for c in columns)
    by_folded: dict[str, str] = {}
    for column in columns:
        by_folded.setdefault(column.casefold(), column)
    close = difflib.get_close_matches(name.casefold(), list(by_folded), n=3, cutoff=0.6)
    if close:
        return f"; did you mean {' or '.join(preview(by_folded[c]) for c in close)}?"
    shown = ", ".join(preview(c) for c in columns[:SHOWN_COLUMNS])
    return f"; the columns are {shown}{', ...' if len(columns) > SHOWN_COLUMNS else ''}"
