"""The `params` stage: what DVC tracks, derived from params.yaml (see tasks/dvc_params.py).

Not a Prefect flow: it only validates and writes two small things, and runs before every
`dvc repro`, where a flow run's start-up would cost more than the work.
"""

from __future__ import annotations

import argparse
import sys

from tasks.dvc_params import resolve
from tasks.errors import FuselineError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="path to params.yaml")
    args = parser.parse_args()
    try:
        resolve(args.params)
    except FuselineError as err:
        print(f"fuseline: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
