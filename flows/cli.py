"""The `fuseline` command: run the pipeline or a stage, serve the schedule, predict, monitor, export, UI.

The arguments and the checks the commands share are in flows/_commands.py; each command that
a flow module also runs as `python -m flows.<name>` (serve, retrain, predict, api, monitor) is
that module's `*_command` (`_FLOW_COMMANDS`), imported here only when chosen, so
`fuseline --help` stays fast and no flow imports this dispatcher back.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from flows._commands import build_parser, check, run_guarded, start_server
from flows._entry import exit_without_final_collection

# Commands a flow module also runs as `python -m flows.<name>`: (module, its `*_command`).
_FLOW_COMMANDS = {
    "serve": ("flows.deploy", "serve_command"),
    "retrain": ("flows.deploy", "retrain_command"),
    "predict": ("flows.predict", "predict_command"),
    "api": ("flows.api", "api_command"),
    "monitor": ("flows.monitor", "monitor_command"),
}


def main(argv: list[str] | None = None) -> None:
    """The console script (no `argv`: the process ends after it) or a call with `argv` (tests)."""
    try:
        _main(sys.argv[1:] if argv is None else argv)
    finally:
        if argv is None:
            exit_without_final_collection()


def _main(argv: list[str]) -> None:
    # argparse cannot pass on options it does not know (`-f`, `--single-item`, `-S`): these two
    # go to DVC before parsing, and the parser only describes them (`--help`)
    if argv[:1] == ["repro"] or argv[:2] == ["exp", "run"]:
        run_guarded(lambda: _hosted_dvc(argv))
        return
    args = build_parser().parse_args(argv)
    run_guarded(lambda: _dispatch(args))


def _dispatch(args: argparse.Namespace) -> None:
    if args.command == "check":
        check(args.params)
        return
    if args.command == "server":
        _server(args.action, args.port)
        return
    if args.command == "ui":
        _ui(args.port)
        return
    if args.command in _FLOW_COMMANDS:
        module_name, command = _FLOW_COMMANDS[args.command]
        getattr(import_module(module_name), command)(args)
        return
    if args.command == "leaderboard":
        _leaderboard()
        return
    if args.command == "export":
        _export(args.output, args.model)
        return
    if args.command == "run":
        from flows.pipeline import pipeline

        pipeline(params_path=args.params)
        return
    module = import_module(f"flows.{args.name}")
    flow_fn = {"align": "align_flow"}.get(args.name, args.name)
    kwargs = {"modality": args.modality} if args.name == "extract" and args.modality else {}
    getattr(module, flow_fn)(params_path=args.params, **kwargs)


def _hosted_dvc(dvc_args: list[str]) -> None:
    """`dvc repro` or `dvc exp run`, unchanged in what it runs and records, with a warm host for
    its stages: an experiment reruns several stages, each otherwise paying its own imports."""
    import os
    import subprocess

    from flows._stage_host import hosted_stages, stage_host

    with stage_host(dict(os.environ)) as env:
        code = subprocess.run([sys.executable, "-m", "dvc", *dvc_args], env=env).returncode
        hosted = hosted_stages(env)
    command = "exp run" if dvc_args[:1] == ["exp"] else "repro"
    print(f"fuseline {command}: {len(hosted)} stage(s) ran in the warm stage host")
    if code:
        raise SystemExit(code)


def _leaderboard() -> None:
    """Print reports/leaderboard.csv of the project in this directory; before evaluate, one line."""
    from tasks.evaluate.leaderboard import format_leaderboard, read_leaderboard
    from tasks.paths import Layout

    path = Layout().leaderboard
    print(format_leaderboard(read_leaderboard(path)))
    print(f"({path}, written by evaluate; the detail is in {Layout().evaluation})")


def _export(output: str, model: str) -> None:
    """Write the fused head as ONNX (checked on this project's test rows when it has them)."""
    from pathlib import Path

    from tasks.paths import Layout
    from tasks.serve.onnx_export import export_bundle

    report = export_bundle(Path(model), Path(output), Layout())
    checked = ", ".join(f"{c['rows']} {name.replace('_', ' ')}" for name, c in report["checked"].items())
    print(f"{output}: the {report['head']} head, {report['task']}; agrees with PyTorch on {checked} "
          f"(largest difference {report['max_abs_diff']:.1e})")  # fmt: skip
    print(f"served model: {report['served_model']}")


def _ui(port: int | None) -> None:
    """Start this checkout's server and say which runs report to it."""
    import os

    state = start_server(port)
    explicit = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if explicit and explicit != state.api_url:
        print(f"PREFECT_API_URL is set to {explicit}: runs started from this shell report there, not here.")
        return
    print("Runs of `dvc repro`, `fuseline run`, `fuseline serve` and `fuseline predict` from this")
    print(f"checkout report here. Elsewhere: export PREFECT_API_URL={state.api_url}")


def _server(action: str, port: int | None) -> None:
    from flows.server import requested_port, running_server, stop_server

    if action == "start":
        start_server(port)
    elif action == "stop":
        if stop_server():
            print("stopped this checkout's Prefect server")
        else:
            print("no Prefect server ran for this checkout")
    else:
        requested_port(port)  # a bad FUSELINE_PREFECT_PORT is named here too, not at the next start
        state = running_server()
        if state is None:
            print("no Prefect server runs for this checkout (start one: fuseline server start)")
        else:
            print(f"{state.ui_url}  up: this checkout's Prefect server (pid {state.pid})")


if __name__ == "__main__":
    main()
