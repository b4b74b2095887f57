"""Align over many image files: wall time, time per file and peak memory as the count grows.

    python bench/align_files.py [--sizes 10000,100000,1000000] [--json] [--out report.json]
                                [--workdir .cache/bench/align_files] [--keep]

For each size, N distinct image files (256 small 96 x 96 JPEGs like the demo's, each copy
made distinct by trailing bytes that decoders ignore, so every file has its own SHA-256)
and a table of N rows pointing at them. `tasks.data.align.align` then runs in a fresh process:
it resolves every path under the root, reads, hashes and test-decodes every file, joins and
splits. Reported per size: wall seconds, microseconds per file, the peak resident memory of
that process, and what the table alone took before align (so the difference is align's
working set). `ratios` divides the time per file at each size by that at the previous one
(1.0 is linear). With `--one-core`, the smallest size is also aligned on one core, to show
what the probing threads buy.

Files are written once per size and kept under --workdir for reruns (--keep); the page cache
holds them on a machine with enough memory, so this measures the CPU work of align, not the
disk. A cold disk adds its read time per byte on top.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DISTINCT_PICTURES = 256


def make_files(root: Path, count: int) -> None:
    """`count` distinct JPEGs under root/images (1000 per folder); those already there are kept."""
    import numpy as np
    from PIL import Image

    done = root / "images.count"
    have = int(done.read_text()) if done.exists() else 0
    if have >= count:
        return
    rng = np.random.default_rng(0)
    pictures = []
    for _ in range(DISTINCT_PICTURES):
        base = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((96, 96), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        pictures.append(buffer.getvalue())
    for i in range(have, count):
        folder = root / "images" / f"{i // 1000:04d}"
        if i == have or i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(pictures[i % DISTINCT_PICTURES] + f"#{i}".encode())
    done.write_text(str(count))


def child(root: Path, count: int) -> None:
    """Align `count` rows in this process and print one JSON line of figures."""
    import pandas as pd

    from tasks.config import DataConfig
    from tasks.data.align import align

    data = DataConfig.model_validate(
        {
            "sources": [{"path": "items.parquet"}],
            "id": "item_id",
            "target": "label",
            "task": "binary",
            "columns": {"categorical": ["category"], "numeric": ["price"], "image": ["photo"]},
            "image_root": str(root / "images"),
            "split": {"method": "hash", "seed": 42},
        }
    )
    ids = [f"item-{i:07d}" for i in range(count)]
    table = pd.DataFrame(
        {
            "item_id": pd.array(ids, dtype="string"),
            "label": pd.array(["yes" if i % 3 == 0 else "no" for i in range(count)], dtype="string"),
            "category": pd.array([("a", "b", "c", "d")[i % 4] for i in range(count)], dtype="string"),
            "price": [float(i % 997) for i in range(count)],
            "photo": pd.array([f"{i // 1000:04d}/{i}.jpg" for i in range(count)], dtype="string"),
        }
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    aligned, report = align(data, [("items.parquet", table)])
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert report.present["photo"] == count, report.present
    print(
        json.dumps(
            {
                "files": count,
                "cores": len(os.sched_getaffinity(0)),
                "seconds": round(seconds, 2),
                "us_per_file": round(seconds / count * 1e6, 1),
                "peak_rss_mb": round(peak),
                "rss_before_align_mb": round(before),
                "aligned_rows": len(aligned),
            }
        )
    )


def run_child(root: Path, count: int, one_core: bool = False) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(count), "--workdir", str(root)]
    if one_core:
        command = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *command]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"align of {count} files failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench" / "align_files")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", type=Path, help="write the JSON report here after every size")
    parser.add_argument("--keep", action="store_true", help="keep the generated files (default: delete)")
    parser.add_argument("--one-core", action="store_true", help="also align the smallest size on one core")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.workdir, args.child)
        return

    sizes = sorted(int(size) for size in args.sizes.split(","))
    report: dict[str, Any] = {
        "machine": {"cores": len(os.sched_getaffinity(0)), "python": platform.python_version()},
        "results": [],
    }
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        for count in sizes:
            make_files(args.workdir, count)
            if args.one_core and count == sizes[0]:
                report["one_core"] = run_child(args.workdir, count, one_core=True)
            report["results"].append(run_child(args.workdir, count))
            print(json.dumps(report["results"][-1]), file=sys.stderr, flush=True)
            results = report["results"]
            report["ratios"] = {
                f"{b['files']}/{a['files']}": round(b["us_per_file"] / a["us_per_file"], 2)
                for a, b in zip(results, results[1:], strict=False)
            }
            if args.out:
                args.out.write_text(json.dumps(report, indent=1) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print(json.dumps(report, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
