"""Keeping a CPU forward's freed memory for the next batch instead of handing it back to the OS.

glibc's malloc returns free memory at the top of its heap to the kernel once more than
M_TRIM_THRESHOLD (128 KiB, raised only as far as 64 MiB by its own heuristics) is free, and
serves any single allocation over M_MMAP_THRESHOLD (at most 32 MiB) with a fresh mapping that
is unmapped again on free. A CNN forward on a CPU allocates and frees a few hundred MB of
activations per batch (EfficientNet-Lite0's largest, at 32 images, is 154 MB), so every batch
faulted all of them back in, zeroed, page by page (150,000 faults for 16 images). Measured in
one process, 2 cores: EfficientNet-Lite0's forward on flipkart's photos ran at 57-63
images/s before and 103-110 after; aisfx on the demo's clips at 39-41 clips/s before and 53-55
after; MiniLM, whose activations are small, 3-10 % faster. PyTorch's advice is to
preload jemalloc or tcmalloc, which a `dvc repro` stage or a Prefect worker cannot do for
itself once started; mallopt can.

The cost is freed memory held for reuse, up to TRIM_THRESHOLD: a whole image extraction's
peak RSS went from 1.5-1.6 GB to 1.65-1.74 GB.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from collections.abc import Callable

MMAP_THRESHOLD = 256 * 1024 * 1024  # single allocations above this are still mapped and unmapped
TRIM_THRESHOLD = 1024 * 1024 * 1024  # at 256 or 512 MiB forwards still trimmed: 84-92 images/s, not 103-110
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h

_lock = threading.Lock()
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds once per process; False where malloc is not glibc's.

    Only what the process does next is affected, and a forked DataLoader worker inherits it.
    FUSELINE_KEEP_FREED_MEMORY=0 in the environment leaves glibc's defaults.
    """
    global _applied
    with _lock:
        if _applied is None:
            mallopt = _glibc_mallopt()
            _applied = (
                mallopt is not None
                and os.environ.get("FUSELINE_KEEP_FREED_MEMORY", "1") != "0"
                and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            )
        return _applied


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's mallopt (1 on success), or None where malloc is another allocator's."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None  # macOS, Windows and musl have other allocators, with other settings
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt
