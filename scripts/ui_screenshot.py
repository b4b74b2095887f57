"""Look at a flow run the way a person would: headless Chromium renders its Prefect UI page.

    python scripts/ui_screenshot.py --output reports/ui/flow-run.png            # local server
    python scripts/ui_screenshot.py --api-url http://127.0.0.1:4300/api --flow-run-id <id> ...

Without --flow-run-id it shows the newest completed run of `fuseline-pipeline`, else of
`evaluate` (what `dvc repro` runs last; its graph shows the metrics and report artifacts).
Besides the PNG it saves the rendered DOM (<output>.html), so a test can check that the
page really shows the run.
Needs the Debian packages `chromium` and `chromium-driver` (or any Chromium on PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
from pathlib import Path
from uuid import UUID

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
FLOW_NAMES = ("fuseline-pipeline", "evaluate")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium found; on Debian: apt-get install -y chromium chromium-driver")


def latest_run_id(api_url: str, flow_names: tuple[str, ...] = FLOW_NAMES) -> UUID:
    """The newest completed run of the first flow in `flow_names` that has one."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    async def query() -> UUID:
        async with PrefectClient(api=api_url) as client:
            for name in flow_names:
                runs = await client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=[name])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))
                    ),
                    sort=FlowRunSort.START_TIME_DESC,
                    limit=1,
                )
                if runs:
                    return runs[0].id
        raise SystemExit(f"no completed run of {' or '.join(flow_names)} on {api_url}")

    return asyncio.run(query())


def run_name(api_url: str, run_id: UUID) -> str:
    """The run's generated name (e.g. 'lovely-eagle'): what its page shows once rendered."""
    from prefect.client.orchestration import PrefectClient

    async def query() -> str:
        async with PrefectClient(api=api_url) as client:
            return (await client.read_flow_run(run_id)).name

    return asyncio.run(query())


def flow_run_page(api_url: str, run_id: UUID) -> str:
    """The UI address of a flow run: the server serves the UI beside its API."""
    return f"{api_url.removesuffix('/api')}/runs/flow-run/{run_id}"


def capture(page_url: str, output: Path, expect: str, wait_ms: int = 20000, size: str = "1600,1200") -> Path:
    """Screenshot `page_url` to `output` once its DOM shows `expect`; saves that DOM beside it.

    `--virtual-time-budget` lets the single-page app fetch and render before the capture, but
    virtual time runs ahead of a slow server (a fresh database, a busy CPU), leaving the
    loading animation. So the DOM is read until it shows `expect` (the run's name), with a
    larger budget each time, and only then is the screenshot taken, with that budget.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    dom = ""
    for attempt in range(4):
        budget = wait_ms * (attempt + 1)
        dom = _chromium(page_url, budget, size, "--dump-dom")
        if expect in dom:
            _chromium(page_url, budget, size, f"--screenshot={output}")
            break
    else:
        raise SystemExit(f"{page_url} never showed {expect!r}; is the server up and the run there?")
    dom_path = output.with_suffix(".html")
    dom_path.write_text(dom)
    return dom_path


def _chromium(page_url: str, budget_ms: int, size: str, action: str) -> str:
    command = [chromium(), *CHROMIUM_FLAGS, f"--window-size={size}", f"--virtual-time-budget={budget_ms}"]
    done = subprocess.run(
        [*command, action, page_url], check=True, capture_output=True, text=True, timeout=300
    )
    return done.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--api-url", default=None, help="default: the project's local server (fuseline ui)")
    parser.add_argument("--flow-run-id", default=None)
    parser.add_argument(
        "--flow", action="append", default=None, help=f"flow name(s) to look for; default {FLOW_NAMES}"
    )
    parser.add_argument("--output", default="reports/ui/flow-run.png")
    parser.add_argument("--wait-ms", type=int, default=20000)
    args = parser.parse_args(argv)
    if args.api_url is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from flows.server import running_server

        state = running_server()  # this checkout's, not whichever answers on 4200
        if state is None:
            raise SystemExit("no Prefect server runs for this checkout; start it with `fuseline ui`")
        args.api_url = state.api_url
    run_id = (
        UUID(args.flow_run_id)
        if args.flow_run_id
        else latest_run_id(args.api_url, tuple(args.flow or FLOW_NAMES))
    )
    page = flow_run_page(args.api_url, run_id)
    dom = capture(page, Path(args.output), run_name(args.api_url, run_id), args.wait_ms)
    print(f"{page}\n  screenshot {args.output}\n  rendered DOM {dom}")


if __name__ == "__main__":
    main()
