"""The `params` stage: what DVC tracks, derived from params.yaml (see tasks/dvc_params.py).

Not a Prefect flow: it only validates and writes two small things, and runs before every
`dvc repro`, where a flow run's start-up would cost more than the work.
"""

from __future__ import annotations

from flows._entry import run_from_command_line
from tasks.dvc_params import resolve

if __name__ == "__main__":
    run_from_command_line(resolve, __doc__ or "")
