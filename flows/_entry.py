"""The command-line edge shared by `python -m flows.<stage>` entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tasks.errors import FuselineError


def run_from_command_line(
    flow: Callable[..., object], description: str, choices: dict[str, tuple[str, ...]] | None = None
) -> None:
    """Parse `--params` (and any `--<name>` choices), run the flow, report our errors in one line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="path to params.yaml")
    for name, allowed in (choices or {}).items():
        parser.add_argument(f"--{name}", choices=allowed, default=None)
    args = vars(parser.parse_args())
    try:
        flow(params_path=args.pop("params"), **{k: v for k, v in args.items() if v is not None})
    except FuselineError as err:
        print(f"fuseline: {err}", file=sys.stderr)
        sys.exit(2)
