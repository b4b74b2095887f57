"""Scheduled retraining: the `fuseline-retrain` flow and the deployment that serves it on a cron.

Each run (optionally) pulls data and caches from the DVC remote, reruns what changed, then
promotes the new bundle into the registry only if its primary metric is not worse than the
promoted one's by more than `schedule.tolerance`; the run's artifact says which and why.

In a DVC project (a `.dvc` directory here) the work is `dvc repro`, so an unchanged stage
costs nothing; elsewhere the `fuseline-pipeline` flow runs as a subflow.
`python -m flows.deploy` (or `fuseline serve`) serves the deployment from this process;
prefect.yaml describes the same deployment for a work pool.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runner import Runner

from flows._commands import check, ensure_api, run_command
from flows._retry import IO_RETRIES
from flows._runtime import cron_deployment
from flows._stage_host import hosted_stages, stage_host
from tasks import escape
from tasks.config import ScheduleConfig, load_params
from tasks.errors import BundleError, ConfigError, DataError
from tasks.paths import Layout
from tasks.serve.champion import NotComparable, compare_on_same_rows
from tasks.serve.promotion import (
    Decision,
    current_entry,
    decide,
    promote,
    record,
    resolve_model_dir,
    tree_digest,
)

DEPLOYMENT = "scheduled-retrain"
_RAN = re.compile(r"Running stage '([^']+)'")


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def _stage_env() -> dict[str, str]:
    """dvc.yaml runs `python -m flows.<stage>`: this interpreter's `python` first on PATH, and
    this run's Prefect API, so the stage runs land on the same server as the retrain run."""
    from prefect.settings import PREFECT_API_URL

    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return env


@task(name="dvc-pull", **IO_RETRIES)
def dvc_pull() -> None:
    """Fetch the data, features and models the remote has, so repro reuses them."""
    result = subprocess.run(_dvc("pull", "--allow-missing"), capture_output=True, text=True, env=_stage_env())
    get_run_logger().info("dvc pull:\n%s", (result.stdout + result.stderr).strip()[-2000:])
    if result.returncode != 0:
        raise RuntimeError(f"dvc pull failed (exit {result.returncode}); is a DVC remote configured?")


@task(name="dvc-repro")
def dvc_repro() -> list[str]:
    """Run `dvc repro`, streaming its output into this task's log; the stages that actually ran.

    Its stages run in a warm stage host (flows/_stage_host.py): one import of the stack for
    the whole repro instead of one per stage."""
    logger = get_run_logger()
    ran: list[str] = []
    tail: list[str] = []
    with (
        stage_host(_stage_env()) as env,
        subprocess.Popen(
            _dvc("repro"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if match := _RAN.search(line):
                ran.append(match.group(1))
            if line:
                logger.info("dvc: %s", line)
                tail = [*tail[-40:], line]
        logger.info("%d stages ran in the warm stage host (%s)", len(hosted := hosted_stages(env)), hosted)
    if process.returncode != 0:
        raise RuntimeError(f"dvc repro failed (exit {process.returncode}):\n" + "\n".join(tail))
    return ran


@task(name="promote-if-not-worse")
def promote_if_not_worse(
    schedule: ScheduleConfig, layout: Layout, cache_dir: str = ".cache/features"
) -> dict[str, Any]:
    """Compare the fresh model with the promoted one and promote it if it is not worse.

    Both are scored on the fresh run's test rows that neither trained on, each through its own
    classes (tasks/serve/champion.py), so the decision compares like with like. When no such
    comparison exists (a changed split leaves too few rows, a changed task) the current model
    is kept and the reason says how to go on; only when the promoted model cannot read today's
    rows does it fall back to the number stored at its promotion, and the reason says so.
    """
    metrics = json.loads(layout.evaluation.read_text())  # the detail: the registry keeps it per version
    metric = metrics["primary_metric"]
    candidate = float(metrics["test"][metric])
    registry = Path(schedule.registry)
    entry = current_entry(registry)
    if entry is not None and entry.get("models_digest") == tree_digest(layout.models):
        return {
            "outcome": "unchanged",
            "version": entry["version"],
            "metric": metric,
            "candidate": candidate,
            "current": entry["value"],
            "reason": f"the trained model is the promoted {entry['version']}",
        }
    current = float(entry["value"]) if entry is not None and entry.get("metric") == metric else None
    same = refused = None
    if entry is not None:
        try:
            champion_dir = resolve_model_dir(registry)
            same = compare_on_same_rows(
                champion_dir, layout.models, pd.read_parquet(layout.aligned), metric, cache_dir
            )
        except NotComparable as err:
            refused = f"no fair comparison with the promoted model, so it stays: {err}"
        except (DataError, BundleError) as err:
            message = escape.log(err)
            get_run_logger().warning("cannot re-score the promoted model on today's rows: %s", message)
    if same is not None:
        candidate, current = same.candidate, same.champion
    if refused is not None:
        decision = Decision(False, metric, candidate, current, schedule.tolerance, refused)
    else:
        interval = same.interval if same is not None else None
        decision = decide(metric, candidate, current, schedule.tolerance, interval)
    if same is not None:
        changes = "".join(f"; {note}" for note in same.notes)
        decision = replace(decision, reason=f"on the same {same.rows} test rows: {decision.reason}{changes}")
    version = promote(registry, layout.models, metrics, decision) if decision.promote else None
    record(registry, decision, version)
    kept = entry["version"] if entry is not None else None
    return {
        "outcome": "promoted" if decision.promote else "kept",
        "version": version or kept,
        "metric": metric,
        "candidate": candidate,
        "current": current,
        "reason": decision.reason,
        "same_rows": same.to_json() if same is not None else None,
        "refused": refused,
    }


@flow(name="fuseline-retrain")
def retrain(params_path: str = "params.yaml") -> dict[str, Any]:
    """Pull (if configured), rerun what changed, evaluate, promote only if not worse."""
    logger = get_run_logger()
    started = time.perf_counter()
    params = load_params(params_path)
    if not params.data.split.stable:
        # Models are compared on their test rows; a redrawn split would compare different rows.
        raise ConfigError(
            f"{params_path}: data.split.method is {params.data.split.method!r}, which redraws every "
            "row's split when rows are added; scheduled retraining needs a stable split: write "
            "`method: hash` under data.split"
        )
    if params.schedule.pull:
        dvc_pull()
    if Path(".dvc").is_dir():
        if Path(params_path).resolve() != Path("params.yaml").resolve():
            raise ConfigError(
                f"{params_path}: dvc repro reads params.yaml; a DVC project retrains with that file"
            )
        stages = dvc_repro()
    else:
        from flows.pipeline import pipeline

        pipeline(params_path)
        stages = ["pipeline"]
    result = promote_if_not_worse(params.schedule, Layout(), params.cache.dir)
    result |= {"stages_rerun": stages, "seconds": round(time.perf_counter() - started, 1)}
    logger.info("%s: %s", result["outcome"], result["reason"])
    publish_promotion(result)
    return result


@task(name="publish-promotion")
def publish_promotion(result: dict[str, Any]) -> None:
    """The decision as the run's artifact (from a task: Prefect 3.8 drops artifacts made in a flow body)."""
    create_markdown_artifact(
        key="fuseline-promotion", markdown=_markdown(result), description="Model promotion"
    )


def _markdown(result: dict[str, Any]) -> str:
    version = escape.text(result["version"])  # read back from the registry's current.json
    headline = {
        "promoted": f"Promoted the new model as **{version}**",
        "kept": f"Kept the current model **{version}**; the new one was not promoted",
        "unchanged": f"Nothing new to promote: the model is still **{version}**",
    }[result["outcome"]]
    current = "none" if result["current"] is None else f"{result['current']:.4f}"
    stages = ", ".join(map(escape.text, result["stages_rerun"])) or "none (nothing changed)"
    return "\n".join(
        [
            f"# {headline}",
            "",
            f"- reason: {escape.text(result['reason'])}",  # may quote an error about the user's files
            f"- {result['metric']}: new {result['candidate']:.4f}, current {current}",
            *_same_rows_lines(result.get("same_rows"), result.get("refused")),
            f"- stages rerun: {stages}",
            f"- run time: {result['seconds']} s",
        ]
    )


def _same_rows_lines(same: dict[str, Any] | None, refused: str | None = None) -> list[str]:
    if refused:
        return ["- compared with: nothing; the reason above says why no fair comparison exists"]
    if not same:
        return ["- compared with: the number stored when the current model was promoted (other rows)"]
    interval = same["interval"]
    val = same["val"]
    return [
        f"- compared on the same {same['rows']} test rows: new {same['candidate']:.4f}, "
        f"current {same['champion']:.4f}; new minus current {same['candidate'] - same['champion']:+.4f} "
        f"(95 % paired bootstrap interval {interval['low']:+.4f} to {interval['high']:+.4f})",
        f"- on the same val rows: new {val['candidate']:.4f}, current {val['champion']:.4f}"
        if val
        else "- on the same val rows: none (the split changed, so the two models early-stopped on others)",
        *(f"- changed since the current model: {escape.text(note)}" for note in same.get("notes", ())),
    ]


def deployment(params_path: str = "params.yaml", name: str = DEPLOYMENT) -> Any:
    """The retrain flow as a deployment on `schedule.cron` in `schedule.timezone`."""
    schedule = load_params(params_path).schedule
    description = (
        f"Retrain on '{schedule.cron}' ({schedule.timezone}); promote unless worse by more than "
        f"{schedule.tolerance:g}"
    )
    return cron_deployment(retrain, name, schedule.cron, schedule.timezone, params_path, description)


def serve(params_path: str = "params.yaml", name: str = DEPLOYMENT) -> None:
    """Register the retrain and monitor deployments and execute their runs until stopped.

    Both are served by this one process: the monitor, on drift, can start the retrain
    deployment (`monitor.retrain_on_drift`) and this process runs it. Ctrl-C or SIGTERM
    stops it cleanly: schedules paused, exit status 0.
    """
    from flows.monitor import deployment as monitor_deployment

    deployments = (deployment(params_path, name), monitor_deployment(params_path))
    names = [f"{served.flow_name}/{served.name}" for served in deployments]
    runner = _ServeRunner(names, pause_on_shutdown=True, limit=None)  # as prefect.serve builds it
    for served in deployments:
        runner.add_deployment(served)
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        pass
    print("stopped serving; the deployments' schedules are paused")


class _ServeRunner(Runner):
    """Prefect's Runner, stopped by SIGTERM the way its own `astop` means it to be.

    Prefect's handler calls the blocking `stop()` inside the running event loop, where it
    only makes `astop()`'s coroutine and drops it ("coroutine 'Runner.astop' was never
    awaited") before `sys.exit`. This one schedules `astop()` on the loop and lets `start()`
    return.
    """

    def __init__(self, names: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.names = names
        self._stopping: asyncio.Future[None] | None = None

    async def __aenter__(self) -> _ServeRunner:
        """Started: now say so (Prefect's serve said it before SIGTERM would stop it cleanly)."""
        await super().__aenter__()
        served = " and ".join(self.names)
        print(f"{served} are served from this process until Ctrl-C or SIGTERM; UI: {_ui_url()}", flush=True)
        return self

    def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
        self._logger.info("SIGTERM received, shutting down...")
        if self._loop is None or not self.started:
            raise KeyboardInterrupt  # not serving yet: nothing to stop but the start
        self._loop.call_soon_threadsafe(self._stop_soon)  # also wakes the loop from its wait

    def _stop_soon(self) -> None:
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self.astop())  # kept: a task needs a reference


def serve_command(args: argparse.Namespace) -> None:
    """`fuseline serve`: a bad setting fails now, not in the first scheduled run; then serve."""
    check(args.params, quiet=True)
    ensure_api()
    serve(params_path=args.params, name=args.name or DEPLOYMENT)


def retrain_command(args: argparse.Namespace) -> None:
    """`fuseline retrain`: one scheduled run now, after the same check as `serve`."""
    check(args.params, quiet=True)
    retrain(params_path=args.params)


def _ui_url() -> str:
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    return f"{ui}/deployments" if ui else "none"


if __name__ == "__main__":
    run_command("serve", serve_command)
