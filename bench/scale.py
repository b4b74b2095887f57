"""How the pipeline's cost grows with rows: wall time, time per row and peak memory per stage.

    python bench/scale.py [--sizes 10000,100000,1000000] [--json] [--out report.json]
                          [--workdir .cache/bench/scale] [--text-model tfidf] [--keep]

For each size, a fresh git + DVC project (the code and dvc.yaml of this checkout) gets the
demo's text and tabular columns (tasks.data.demo.demo_table: short titles and descriptions,
a category, a price; no images or clips, whose files would measure the disk) as one Parquet
source, and `encoders.text.model: tfidf`. Every stage then runs as `dvc repro --single-item
<stage>` in pipeline order, so a stage's figures include what DVC does around it (hashing its
deps and outs), as a user pays it. Per stage: wall seconds, microseconds per row, and the
peak resident memory of the stage's process tree (ru_maxrss from wait4: the largest of DVC
and the flow it started). Finally `dvc repro` with nothing changed is timed.

Stages share one Prefect server started here (as `make demo` does), so no stage pays a
temporary server's start-up. Prefect's own cost per task run is measured first, on the same
server (`prefect`: a flow of no-op tasks against an empty one), to set against a chunk's
encoding time. The `ratios` section divides each stage's time per row at the
largest size by that at the previous size: 1.0 is linear, the issue's target is <= 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flows.server import start_server, stop_server  # noqa: E402
from tasks.atomic import write_json  # noqa: E402
from tasks.data.demo import demo_table  # noqa: E402
from tasks.paths import copy_project_code  # noqa: E402

GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
SEED = 7


def params_for(text_model: str, tfidf_dim: int | None = None) -> dict[str, Any]:
    text: dict[str, Any] = {"model": text_model}
    if tfidf_dim is not None:
        text["tfidf"] = {"dim": tfidf_dim}
    return {
        "data": {
            "sources": [{"path": "items.parquet"}],
            "id": "item_id",
            "target": "label",
            "task": "binary",
            "columns": {"categorical": ["category"], "numeric": ["price"], "text": ["title", "description"]},
            "split": {"method": "hash", "seed": 42},
            "demo": None,
        },
        "encoders": {"text": text},
    }


def make_project(root: Path, rows: int, text: tuple[str, int | None], env: dict[str, str]) -> float:
    """A fresh project with `rows` demo rows; returns the seconds spent generating the data."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    copy_project_code(REPO, root)
    (root / "params.yaml").write_text(yaml.safe_dump(params_for(*text), sort_keys=False))
    started = time.perf_counter()
    demo_table(rows, SEED).to_parquet(root / "items.parquet", index=False)
    seconds = time.perf_counter() - started
    for args in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        [*GIT, "add", "-A"],
        [*GIT, "commit", "-qm", "init"],
    ):
        subprocess.run(args, cwd=root, env=env, check=True, capture_output=True)
    return seconds


def stage_order(root: Path, env: dict[str, str]) -> list[str]:
    """Stages in the order `dvc repro` runs them (`dvc dag` lists them topologically)."""
    out = subprocess.run(
        ["dvc", "repro", "--dry", "--force"], cwd=root, env=env, capture_output=True, text=True, check=True
    ).stdout
    return [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")]


def measured(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB of the process tree, exit code) of one command."""
    with log.open("ab") as sink:
        started = time.perf_counter()
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, process.returncode  # ru_maxrss is KiB on Linux


def run_size(root: Path, rows: int, text: tuple[str, int | None], env: dict[str, str]) -> dict[str, Any]:
    generate = make_project(root, rows, text, env)
    log = root / "bench.log"
    stages: dict[str, dict[str, float]] = {}
    for stage in stage_order(root, env):
        seconds, rss, code = measured(["dvc", "repro", "--single-item", stage], root, env, log)
        stages[stage] = {
            "seconds": round(seconds, 2),
            "us_per_row": round(seconds / rows * 1e6, 2),
            "peak_rss_mb": round(rss, 1),
        }
        print(f"  {rows:>9} rows  {stage:<18} {seconds:8.1f} s  {rss:8.0f} MiB", flush=True)
        if code != 0:
            raise SystemExit(f"stage {stage} failed at {rows} rows; see {log}")
    noop, _, code = measured(["dvc", "repro"], root, env, log)
    if code != 0:
        raise SystemExit(f"no-op dvc repro failed at {rows} rows; see {log}")
    metrics = json.loads((root / "reports" / "evaluation.json").read_text())
    return {
        "rows": rows,
        "generate_seconds": round(generate, 2),
        "stages": stages,
        "pipeline_seconds": round(sum(s["seconds"] for s in stages.values()), 1),
        "noop_repro_seconds": round(noop, 2),
        "test_metric": {metrics["primary_metric"]: metrics["test"][metrics["primary_metric"]]},
        "feature_bytes": sum(f.stat().st_size for f in (root / "data" / "features").glob("*.parquet")),
    }


def ratios(results: list[dict[str, Any]]) -> dict[str, float]:
    """Time per row at the largest size over that at the size before it, per stage."""
    if len(results) < 2:
        return {}
    small, large = results[-2]["stages"], results[-1]["stages"]
    return {
        stage: round(large[stage]["us_per_row"] / small[stage]["us_per_row"], 2)
        for stage in large
        if stage in small and small[stage]["us_per_row"] > 0
    }


def prefect_task_overhead(env: dict[str, str], tasks: int) -> dict[str, float]:
    """Seconds Prefect adds per task run on this server: a flow of `tasks` no-op tasks, less
    the same flow without them, over the count (in a child process, on the bench's server)."""
    out = subprocess.run(
        [sys.executable, __file__, "--prefect-child", str(tasks)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def _prefect_child(tasks: int) -> None:
    from prefect import flow, task

    @task
    def nothing(index: int) -> int:
        return index

    @flow
    def with_tasks(count: int) -> None:
        for index in range(count):
            nothing(index)

    with_tasks(1)  # warm: imports, server connection
    timings = []
    for count in (0, tasks, 0, tasks):
        started = time.perf_counter()
        with_tasks(count)
        timings.append(time.perf_counter() - started)
    empty, full = min(timings[0], timings[2]), min(timings[1], timings[3])
    per_task_ms = (full - empty) / tasks * 1000
    print(json.dumps({"tasks": tasks, "ms_per_task": round(per_task_ms, 3), "empty_flow_s": round(empty, 3)}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--text-model", default="tfidf")
    parser.add_argument("--tfidf-dim", type=int, help="encoders.text.tfidf.dim (384: MiniLM's feature width)")
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench" / "scale")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", type=Path, help="write the JSON report here after every size")
    parser.add_argument("--keep", action="store_true", help="keep each size's project (default: delete)")
    parser.add_argument("--prefect-tasks", type=int, default=2000, help="no-op tasks timed")
    parser.add_argument("--prefect-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prefect_child:
        _prefect_child(args.prefect_child)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    state = args.workdir / "prefect"
    env["PREFECT_API_URL"] = start_server(port=4290, state_dir=state)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "text_model": args.text_model,
        "tfidf_dim": args.tfidf_dim,
        "sizes": [],
    }
    try:
        report["prefect"] = prefect_task_overhead(env, args.prefect_tasks)
        print(f"  Prefect: {report['prefect']['ms_per_task']:.3f} ms per task run", flush=True)
        for rows in sizes:
            root = args.workdir / f"rows-{rows}"
            report["sizes"].append(run_size(root, rows, (args.text_model, args.tfidf_dim), env))
            report["ratios"] = ratios(report["sizes"])
            if args.out:
                write_json(report, args.out)
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        stop_server(state_dir=state)
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
