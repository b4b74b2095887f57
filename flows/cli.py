"""The `fuseline` command: run the pipeline or one stage, and manage the local Prefect server."""

from __future__ import annotations

import argparse
import sys

from tasks.errors import FuselineError
from tasks.paths import MODALITIES

STAGES = ("demo", "ingest", "align", "extract", "train", "evaluate")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fuseline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the whole pipeline as one Prefect flow")
    run.add_argument("--params", default="params.yaml")
    stage = commands.add_parser("stage", help="run one stage (what dvc repro calls)")
    stage.add_argument("name", choices=STAGES)
    stage.add_argument("--params", default="params.yaml")
    stage.add_argument("--modality", choices=MODALITIES, default=None, help="extract only")
    server = commands.add_parser("server", help="the project's local Prefect server (UI on 127.0.0.1)")
    server.add_argument("action", choices=("start", "stop", "status"))
    server.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        _dispatch(args)
    except FuselineError as err:
        print(f"fuseline: {err}", file=sys.stderr)
        sys.exit(2)


def _dispatch(args: argparse.Namespace) -> None:
    if args.command == "server":
        _server(args.action, args.port)
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
