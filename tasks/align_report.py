"""The counts align reports (summary.json), filled by align and by each modality's cell inspection.

Align creates the report and the modality plug-ins add what they found in their cells
(missing, refused and undecodable files). It lives below both, so the plug-in interface
(tasks/modalities/base.py) can name it without importing align, which imports the plug-ins.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AlignReport:
    """Counts a person wants to see after alignment (also written as summary.json)."""

    rows: int = 0
    rows_per_split: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    files_missing: dict[str, int] = field(default_factory=dict)  # file columns (image, audio, ...)
    paths_refused: dict[str, int] = field(default_factory=dict)  # outside the root, or not a path
    files_undecodable: dict[str, int] = field(default_factory=dict)  # made absent (data.on_bad_<modality>)
    dropped_unmatched_ids: dict[str, int] = field(default_factory=dict)
    bad_values: dict[str, int] = field(default_factory=dict)  # numeric cells made missing by ingest
    replaced_bytes: dict[str, int] = field(default_factory=dict)  # cells with non-UTF-8 bytes
    huge_values: dict[str, int] = field(default_factory=dict)  # left out of scaling, then clipped
    unseen_categories: dict[str, int] = field(default_factory=dict)  # val/test values not in train
    cross_split_duplicates: dict[str, int] = field(
        default_factory=dict
    )  # rows whose text/file is in 2 splits
    target_type: str | None = None  # the target's type in the source (ingest.target_type); train records it
