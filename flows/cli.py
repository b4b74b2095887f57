"""The `fuseline` command: run the pipeline or one stage, serve the schedule, predict, monitor, and the UI."""

from __future__ import annotations

import argparse
import sys

from tasks.errors import ConfigError, FuselineError
from tasks.modalities import modality_names

STAGES = ("demo", "ingest", "align", "extract", "train", "evaluate")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fuseline", description=__doc__)
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
    server = commands.add_parser("server", help="the project's local Prefect server (UI on 127.0.0.1)")
    server.add_argument("action", choices=("start", "stop", "status"))
    server.add_argument("--port", type=_port, default=None)
    ui = commands.add_parser("ui", help="start the local Prefect server (SQLite) and print the UI address")
    ui.add_argument("--port", type=_port, default=None)
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
    predict.add_argument("--output", default="predictions.parquet")
    predict.add_argument("--params", default="params.yaml", help="read for `runtime` only (where chunks run)")
    predict.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="MODALITY=DIR",
        help="where a file modality's paths are relative to (e.g. image=photos/); default: the bundle's",
    )
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
    monitor.add_argument(
        "--root", action="append", default=[], metavar="MODALITY=DIR",
        help="where a file modality's paths in --input are relative to (default: params.yaml's)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        _dispatch(args)
    except FuselineError as err:
        print(f"fuseline: {_one_line(str(err))}", file=sys.stderr)
        sys.exit(2)


def _one_line(message: str) -> str:
    """A message as one line: a library's text inside it (a YAML parser's) may span several."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _port(text: str) -> int:
    """argparse type for --port: a usage error, not a traceback, for 0, 70000 or 'abc'."""
    from flows._runtime import parse_port

    try:
        return parse_port(text, "--port")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--port: ")) from None


def _dispatch(args: argparse.Namespace) -> None:
    if args.command == "check":
        _check(args.params)
        return
    if args.command == "server":
        _server(args.action, args.port)
        return
    if args.command == "ui":
        _server("start", args.port)
        print("Runs of `dvc repro`, `fuseline run`, `fuseline serve` and `fuseline predict` from this")
        print("directory report here. Elsewhere: export PREFECT_API_URL=" + _api_url(args.port))
        return
    if args.command == "serve":
        _check(args.params, quiet=True)  # a bad setting fails now, not in the first scheduled run
        _ensure_api()
        from flows.deploy import DEPLOYMENT, serve

        serve(params_path=args.params, name=args.name or DEPLOYMENT)
        return
    if args.command == "retrain":
        _check(args.params, quiet=True)
        from flows.deploy import retrain

        retrain(params_path=args.params)
        return
    if args.command == "predict":
        from pathlib import Path

        from flows.predict import check_predict_paths, predict
        from tasks.train.bundle import verify_bundle

        # Refusals before the flow starts are one line; inside a flow run Prefect logs a traceback.
        verify_bundle(Path(check_predict_paths(args.model, args.input, args.output, args.params)))
        _check_cluster(args.params)
        summary = predict(args.model, args.input, args.output, args.params, _roots(args.root))
        print(f"{summary['rows']} predictions -> {summary['output']}")
        return
    if args.command == "monitor":
        _monitor(args)
        return
    if args.command == "run":
        from flows.pipeline import pipeline

        pipeline(params_path=args.params)
        return
    from importlib import import_module

    module = import_module(f"flows.{args.name}")
    flow_fn = {"align": "align_flow"}.get(args.name, args.name)
    kwargs = {"modality": args.modality} if args.name == "extract" and args.modality else {}
    getattr(module, flow_fn)(params_path=args.params, **kwargs)


def _monitor(args: argparse.Namespace) -> None:
    """Run the monitor flow and print its verdict, one line per drifted column; drift is not an error."""
    from flows.monitor import monitor
    from tasks.serve.pathcheck import check_input_path

    if args.input is not None:
        check_input_path(args.input)  # one line before the flow starts (a FIFO, a device, missing)
    summary = monitor(
        params_path=args.params,
        input_path=args.input,
        model=None if args.inputs_only else args.model,
        roots=_roots(args.root) or None,
    )
    print(summary["headline"])
    for line in summary["column_lines"]:
        print(f"  drift: {line}")
    if summary.get("performance"):
        from tasks.monitor.history import summary_line

        history = summary["files"]["performance.png"]
        print(f"performance: {summary_line(summary['performance'])} (over time: {history})")
    print(f"report: {summary['files']['drift.md']} (exit 0: drift is reported, not an error)")


def _roots(pairs: list[str]) -> dict[str, str]:
    """`--root image=photos/` pairs as a mapping; a malformed pair is a usage error."""
    roots: dict[str, str] = {}
    for pair in pairs:
        name, sep, directory = pair.partition("=")
        if not sep or not name or not directory:
            raise ConfigError(f"--root {pair!r}: expected MODALITY=DIR, e.g. image=photos/")
        roots[name] = directory
    return roots


def _check(params_path: str, quiet: bool = False) -> None:
    """Validate params.yaml, then what its settings meet on this machine (tasks/preflight.py).

    The first is static (types, ranges, cron fields: also checked by every stage that loads
    the file); the second looks at the device, the paths and the cluster, which can change
    between runs. Either problem is one ConfigError naming the key: exit 2.
    """
    from tasks.config import load_params
    from tasks.preflight import check_environment

    params = load_params(params_path)
    try:
        check_environment(params)
    except ConfigError as err:
        raise ConfigError(f"{params_path}: {err}") from None
    if quiet:
        return
    columns = params.data.columns
    roles = ", ".join(f"{role} {len(getattr(columns, role))}" for role in columns.roles())
    print(f"{params_path}: valid ({params.data.task} target {params.data.target!r}; columns: {roles})")


def _check_cluster(params_path: str) -> None:
    """Prediction's chunks go to `runtime.address` when one is set: it must answer first."""
    from pathlib import Path

    from tasks.config import load_params
    from tasks.preflight import check_cluster

    if params_path and Path(params_path).exists():
        check_cluster(load_params(params_path).runtime)


def _api_url(port: int | None) -> str:
    from flows._runtime import local_api_url

    return local_api_url(port)


def _ensure_api() -> None:
    """A served deployment needs a lasting API: PREFECT_API_URL, else the local server (started if down)."""
    import os

    if "PREFECT_API_URL" in os.environ:
        return
    from flows.server import start_server

    url = start_server()
    os.environ["PREFECT_API_URL"] = url
    print(f"Prefect UI: {url.removesuffix('/api')}")


def _server(action: str, port: int | None) -> None:
    from flows._runtime import local_api_url, server_is_up
    from flows.server import start_server, stop_server

    if action == "start":
        url = start_server(port)
        print(f"Prefect server: {url.removesuffix('/api')}  (API {url})")
    elif action == "stop":
        print("stopped" if stop_server() else "no server started by this project")
    else:
        url = local_api_url(port)
        print(f"{url}: {'up' if server_is_up(url) else 'down'}")


if __name__ == "__main__":
    main()
