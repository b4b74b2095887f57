"""Peak resident memory, as the kernel counts it (VmHWM), around a call or an align.

`added_peak(call)` resets the peak to the current resident size first (writing 5 to
/proc/self/clear_refs), so it measures what the call added at its worst, in this process.
Run as `python -m tests.bad_inputs.peak_memory DIR [DIR ...]` to ingest and align each
project directory in one fresh interpreter; it prints one JSON object with each directory's
peak in bytes (the interpreter with every library loaded, plus what that align held at its
worst: what a user sees as the align stage's memory) and its align summary.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def can_measure() -> bool:
    """Whether this kernel lets a process reset its own peak (Linux 4.0 and later)."""
    try:
        reset_peak()
    except OSError:
        return False
    return True


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current VmRSS


def _status_bytes(field: str) -> int:
    found = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert found is not None, field
    return int(found.group(1)) * 1024


def added_peak(call: Callable[[], T]) -> tuple[T, int]:
    """(call's result, bytes its peak rose above the resident size it started at)."""
    reset_peak()
    start = _status_bytes("VmRSS")
    result = call()
    return result, _status_bytes("VmHWM") - start


def align_peak(project: Path) -> dict[str, Any]:
    """{"peak": bytes while `project` is ingested and aligned, "report": its align summary}."""
    from tasks.config import load_params
    from tasks.data.align import align
    from tasks.data.ingest import ingest_sources, read_snapshots
    from tasks.paths import Layout

    with contextlib.chdir(project):
        params = load_params("params.yaml")
        layout = Layout()
        reset_peak()
        ingest_sources(params.data, layout.raw)
        _, report = align(params.data, read_snapshots(layout.raw))
        return {"peak": _status_bytes("VmHWM"), "report": asdict(report)}


def main(directories: list[str]) -> None:
    from tasks.modalities import embedded

    embedded()  # every modality's module imported before the first reset
    print(json.dumps({directory: align_peak(Path(directory)) for directory in directories}))


if __name__ == "__main__":
    main(sys.argv[1:])
