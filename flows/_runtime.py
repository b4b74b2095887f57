"""Process set-up shared by every flow entry point, below flows/server.py.

Where the local Prefect API is (`local_api_url`, `parse_port`, `server_is_up`: the server
module builds on these; flows/server.py `configure_prefect` picks the API for every stage).
It also turns `runtime.task_runner` into a Prefect task runner (imported only when chosen,
so a stage that never fans out pays nothing for Dask or Ray).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any, Generic, TypeVar

from tasks.errors import ConfigError

T = TypeVar("T")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200


def local_api_url(port: int | None = None) -> str:
    """The local server's API: at `port`, else $FUSELINE_PREFECT_PORT, else 4200 (bad: ConfigError)."""
    if port is None:
        port = parse_port(os.environ.get("FUSELINE_PREFECT_PORT", str(DEFAULT_PORT)), "FUSELINE_PREFECT_PORT")
    return f"http://{DEFAULT_HOST}:{port}/api"


def parse_port(text: str, name: str) -> int:
    """A TCP port from 1 to 65535, else a ConfigError naming where the text came from."""
    digits = text.strip()
    port = int(digits) if digits.isascii() and digits.isdigit() else 0
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name}: {text!r} is not a port (a number from 1 to 65535)")
    return port


# Requests to our own host go direct: an http_proxy in the environment must not answer for them.
local_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def server_is_up(api_url: str, timeout: float = 0.5) -> bool:
    try:
        with local_opener.open(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def task_runner_for(task_runner: str, address: str | None = None, workers: int = 2) -> Any:
    """The Prefect task runner that `runtime.task_runner` names (imports it only when chosen).

    local: Prefect's thread pool with one thread, so chunks run one after another in this
    process and torch keeps every core. dask/ray: chunks run in parallel on a cluster, the one
    at `address` or, without one, a local cluster of `workers` single-threaded processes
    started for this run and stopped after it.
    """
    if task_runner == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1)
    if task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": ":0",  # any free port: 8787 may be taken
            }
        )
    if task_runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise ConfigError(
                "runtime.task_runner: ray needs the prefect-ray package (pip install prefect-ray)"
            ) from None
        if address:
            return RayTaskRunner(address=address)
        return RayTaskRunner(init_kwargs={"num_cpus": workers, "include_dashboard": False})
    raise ValueError(f"unknown task runner {task_runner!r}")


def cron_deployment(
    flow: Any, name: str, cron: str, timezone: str, params_path: str, description: str
) -> Any:
    """A flow as a deployment on a cron, run with the params file it was built from."""
    from prefect.schedules import Cron

    return flow.to_deployment(
        name=name,
        schedule=Cron(cron, timezone=timezone),
        parameters={"params_path": params_path},
        description=description,
        tags=["fuseline"],
    )


class Unstored(Generic[T]):
    """A subflow parameter that Prefect records as a placeholder without looking inside.

    Prefect stores a flow run's parameters through FastAPI's `jsonable_encoder`, which turns a
    dataclass into a dict with `dataclasses.asdict` (a deep copy of every array) before finding
    that numpy arrays are not JSON: a million rows' features cost gigabytes and seconds just to
    be refused. With no `__dict__` and no iteration, this wrapper is refused at once.
    """

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value
