"""The `fuseline` command line's parser and the checks its commands share, below the commands.

flows/cli.py dispatches each command to the flow module that runs it; a flow module that is
also run as `python -m flows.<name>` (deploy, monitor, predict) parses its arguments and
reports its errors through `run_command` here, so no command imports the dispatcher back.
Nothing heavy is imported at module level: `fuseline --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from flows._entry import exit_without_final_collection
from tasks.errors import ConfigError, FuselineError
from tasks.modalities import modality_names

if TYPE_CHECKING:
    from flows.server import ServerState

STAGES = ("demo", "ingest", "align", "extract", "train", "evaluate")
_PORT_HELP = "default: $FUSELINE_PREFECT_PORT, else the first free port from 4200 (each checkout has its own)"
DESCRIPTION = (
    "The `fuseline` command: run the pipeline or one stage, serve the schedule, predict, monitor, and the UI."
)


def build_parser() -> argparse.ArgumentParser:
    """Every command's arguments, in one parser, for `fuseline` and the `python -m` entry points alike."""
    parser = argparse.ArgumentParser(prog="fuseline", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the whole pipeline as one Prefect flow")
    run.add_argument("--params", default="params.yaml")
    check = commands.add_parser(
        "check",
        help="validate params.yaml and what its settings meet here (make demo runs this before dvc, "
        "which reads it unguarded)",
    )
    check.add_argument("--params", default="params.yaml")
    stage = commands.add_parser("stage", help="run one stage (what dvc repro calls)")
    stage.add_argument("name", choices=STAGES)
    stage.add_argument("--params", default="params.yaml")
    stage.add_argument("--modality", choices=modality_names(), default=None, help="extract only")
    repro = commands.add_parser(
        "repro",
        help="dvc repro with its stages in one warm process (flows/_stage_host.py): ~4 s less per stage",
    )
    repro.add_argument("dvc_args", nargs=argparse.REMAINDER, help="passed to dvc repro as they are")
    experiment = commands.add_parser(
        "exp", help="dvc exp run with its stages in one warm process, as fuseline repro: ~4 s less per stage"
    )
    experiment.add_argument("action", choices=("run",))
    experiment.add_argument(
        "dvc_args", nargs=argparse.REMAINDER, help="passed to dvc exp run as they are (-S key=value, -n name)"
    )
    server = commands.add_parser(
        "server", help="this checkout's local Prefect server (UI on 127.0.0.1; one per checkout)"
    )
    server.add_argument("action", choices=("start", "stop", "status"))
    server.add_argument("--port", type=_port, default=None, help=_PORT_HELP)
    ui = commands.add_parser(
        "ui", help="start this checkout's local Prefect server (SQLite) and print its UI address"
    )
    ui.add_argument("--port", type=_port, default=None, help=_PORT_HELP)
    serve = commands.add_parser(
        "serve", help="serve the retrain (schedule.cron) and monitor (monitor.cron) deployments until stopped"
    )
    serve.add_argument("--params", default="params.yaml")
    serve.add_argument("--name", default=None, help="deployment name (default scheduled-retrain)")
    retrain = commands.add_parser(
        "retrain", help="one scheduled run now: repro, evaluate, promote if not worse"
    )
    retrain.add_argument("--params", default="params.yaml")
    predict = commands.add_parser("predict", help="predict new raw rows with a bundle or registry")
    predict.add_argument(
        "--model", default="models", help="bundle directory (models/) or registry (registry/)"
    )
    predict.add_argument("--input", required=True, help="csv, parquet or jsonl with the training columns")
    predict.add_argument(
        "--output",
        default=None,
        help="where to write the predictions (.parquet or .pq; the id column, prob_<class>..., prediction); "
        "default: predictions/<input name>.parquet in the current directory",
    )
    predict.add_argument("--params", default="params.yaml", help="read for `runtime` only (where chunks run)")
    _add_root(
        predict, "where a file modality's paths are relative to (e.g. image=photos/); default: the bundle's"
    )
    _add_api(commands)
    monitor = commands.add_parser(
        "monitor", help="drift of rows the served model has not seen against its train rows; exits 0"
    )
    monitor.add_argument(
        "--input",
        default=None,
        help="csv, parquet or jsonl of new rows (default: source rows the model never saw)",
    )
    monitor.add_argument("--params", default="params.yaml")
    monitor.add_argument(
        "--model",
        default="served",
        help="bundle or registry to watch (default 'served': the registry's promoted version, else models/)",
    )
    monitor.add_argument("--inputs-only", action="store_true", help="compare inputs only, not predictions")
    _add_root(monitor, "where a file modality's paths in --input are relative to (default: params.yaml's)")
    commands.add_parser(
        "leaderboard", help="every trained model's val and test metric and training time (after evaluate)"
    )
    export = commands.add_parser(
        "export", help="the fused head as ONNX, checked against PyTorch (needs fuseline[onnx])"
    )
    export.add_argument("output", help="the .onnx file to write; its check report goes beside it (.json)")
    export.add_argument("--model", default="models", help="bundle directory (models/) or registry")
    return parser


def _add_root(command: argparse.ArgumentParser, help_text: str) -> None:
    """`--root MODALITY=DIR`, repeatable: the commands that read file cells share its form."""
    command.add_argument("--root", action="append", default=[], metavar="MODALITY=DIR", help=help_text)


def _add_api(commands: argparse._SubParsersAction) -> None:
    """`fuseline api`'s arguments (flows/api.py)."""
    api = commands.add_parser(
        "api", help="serve predictions over HTTP: POST /predict, GET /model, GET /health (flows/api.py)"
    )
    api.add_argument(
        "--model", default=None,
        help="bundle directory or registry (default: schedule.registry once one is promoted, else models/)",
    )  # fmt: skip
    api.add_argument(
        "--host", default="127.0.0.1", help="address to bind; beyond loopback $FUSELINE_API_TOKEN is required"
    )
    api.add_argument("--port", type=_port, default=8000)
    api.add_argument("--params", default="params.yaml", help="read for cache.dir and schedule.registry")
    _add_root(api, "where a file modality's path cells are relative to (default: the bundle's)")
    api.add_argument(
        "--batch-wait-ms", type=float, default=50.0,
        help="the longest a batch waits for requests on their way or expected back (docs/serving.md)",
    )  # fmt: skip
    api.add_argument("--max-batch-rows", type=int, default=256, help="rows predicted together at most")
    api.add_argument("--max-body-bytes", type=int, default=8 * 2**20, help="larger request bodies get 413")


def run_guarded(action: Callable[[], None]) -> None:
    """Run a command; one of our errors is one line on stderr and exit status 2, not a traceback."""
    try:
        action()
    except FuselineError as err:
        print(f"fuseline: {one_line(str(err))}", file=sys.stderr)
        sys.exit(2)


def run_command(
    command: str, run: Callable[[argparse.Namespace], None], argv: list[str] | None = None
) -> None:
    """`python -m flows.<module> ARGS` as `fuseline <command> ARGS`: the same parser, the same errors."""
    args = build_parser().parse_args([command, *(sys.argv[1:] if argv is None else argv)])
    try:
        run_guarded(lambda: run(args))
    finally:
        if argv is None:  # the process ends after it
            exit_without_final_collection()


def one_line(message: str) -> str:
    """A message as one line: a library's text inside it (a YAML parser's) may span several."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _port(text: str) -> int:
    """argparse type for --port: a usage error, not a traceback, for 0, 70000 or 'abc'."""
    from flows._runtime import parse_port

    try:
        return parse_port(text, "--port")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--port: ")) from None


def parse_roots(pairs: list[str]) -> dict[str, str]:
    """`--root image=photos/` pairs as a mapping; a malformed pair is a usage error."""
    found: dict[str, str] = {}
    for pair in pairs:
        name, sep, directory = pair.partition("=")
        if not sep or not name or not directory:
            raise ConfigError(f"--root {pair!r}: expected MODALITY=DIR, e.g. image=photos/")
        found[name] = directory
    return found


def check(params_path: str, quiet: bool = False) -> None:
    """Validate params.yaml, then what its settings meet on this machine (tasks/preflight.py).

    The first is static (types, ranges, cron fields: also checked by every stage that loads
    the file); the second looks at the device, the paths and the cluster, which can change
    between runs. Either problem is one ConfigError naming the key: exit 2. Last, every
    configured column the sources' headers lack is one line naming its key, the files and
    the closest name there (tasks/data/columns.py): exit 2 after listing them all.
    """
    from tasks.config import load_params
    from tasks.data.columns import source_column_problems
    from tasks.preflight import check_environment

    params = load_params(params_path)
    try:
        check_environment(params)
    except ConfigError as err:
        raise ConfigError(f"{params_path}: {err}") from None
    missing = source_column_problems(params.data)
    for problem in missing:
        print(f"fuseline: {params_path}: {one_line(problem.line())}", file=sys.stderr)
    if missing:
        sys.exit(2)
    if quiet:
        return
    columns = params.data.columns
    roles = ", ".join(f"{role} {len(getattr(columns, role))}" for role in columns.roles())
    print(f"{params_path}: valid ({params.data.task} target {params.data.target!r}; columns: {roles})")


def check_cluster(params_path: str) -> None:
    """Prediction's chunks go to `runtime.address` when one is set: it must answer first."""
    from pathlib import Path

    from tasks.config import load_params
    from tasks.preflight import check_cluster as check_address

    if params_path and Path(params_path).exists():
        check_address(load_params(params_path).runtime)


def ensure_api() -> None:
    """A served deployment needs a lasting API: PREFECT_API_URL, else this checkout's server (started)."""
    import os

    if "PREFECT_API_URL" in os.environ:
        return
    os.environ["PREFECT_API_URL"] = start_server(None).api_url


def start_server(port: int | None) -> ServerState:
    """This checkout's server, started unless it runs, and one line saying where it is."""
    from flows.server import ensure_server

    started = ensure_server(port)
    if started.note:
        print(started.note)
    state = started.state
    how = "started" if started.started else "already running"
    print(f"Prefect server of this checkout ({how}, pid {state.pid}): {state.ui_url}  (API {state.api_url})")
    return state
