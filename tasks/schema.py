"""Names the project gives its own columns, in one place.

The aligned table and the feature files add columns beside the user's: an id, the split,
the target, a presence mask and a content digest per column, and the hashed `__wide__`
blocks. A user column with one of these names (or prefixes) would be overwritten or read as
ours, so config validation refuses it up front (see `reserved_reason`).
"""

from __future__ import annotations

ID, SPLIT, TARGET = "row_id", "split", "target"
PRESENT = "present__"  # present__<column>: False where the row has no usable value
DIGEST = "sha256__"  # sha256__<image column>: SHA-256 of the file's bytes
WIDE = "__wide__"  # <modality>.__wide__: wide_deep's hashed id blocks
SPLITS = ("train", "val", "test")

RESERVED_NAMES = (ID, SPLIT, TARGET, WIDE)
RESERVED_PREFIXES = (PRESENT, DIGEST)


def reserved_reason(column: str) -> str | None:
    """Why a feature column may not have this name, or None when it may."""
    if not column.strip():
        return "a column name cannot be empty or blank"
    if column in RESERVED_NAMES:
        return f"{column!r} is a name fuseline gives its own column"
    for prefix in RESERVED_PREFIXES:
        if column.startswith(prefix):
            return f"names starting with {prefix!r} are fuseline's own columns"
    return None
