"""Settings whose meaning depends on this machine, checked before any work starts.

params.yaml's own validators (tasks/config.py) check what a value says; these check what it
meets here: a `train.device: cuda` on a machine without CUDA, a media root that is a file, a
source that is a FIFO, a registry inside models/ through a symlink, a cluster address where
nothing answers. Each used to pass `fuseline check` and fail minutes later in a stage, with a
library's traceback. `fuseline check` and `fuseline serve` run `check_environment`; every
problem is a ConfigError naming the params key.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.cluster_address import RAY_KEYWORDS, with_scheme
from tasks.errors import ConfigError
from tasks.pathcheck import probe, show, special_file_problem
from tasks.paths import Layout

if TYPE_CHECKING:
    from tasks.config import Params, RuntimeConfig

CONNECT_TIMEOUT = 3.0  # seconds a cluster gets to accept a connection at check time

_NOT_PROBED = frozenset({"ucx"})  # not a plain TCP listener


def cluster_endpoint(runtime: RuntimeConfig) -> tuple[str, int] | None:
    """(host, port) where the configured cluster must answer; None when no remote cluster is named."""
    address = runtime.address
    if runtime.task_runner == "local" or address is None or address in RAY_KEYWORDS:
        return None
    parts = urllib.parse.urlsplit(with_scheme(address))
    if parts.scheme in _NOT_PROBED or not parts.hostname or not parts.port:
        return None
    return parts.hostname, parts.port


def check_environment(params: Params, layout: Layout | None = None) -> None:
    """Refuse, with one ConfigError naming the key, the first setting this machine cannot honour."""
    layout = layout or Layout()
    check_device(params.train.device)
    check_sources(params)
    for key, path in _directories(params):
        check_directory(key, path)
    check_registry(params.schedule.registry, layout)
    check_cluster(params.runtime)


def check_device(device: str) -> None:
    """`train.device: cuda` needs a visible CUDA device (`auto` takes one when there is one): the
    stages' own choice (tasks/device.py), made before they start."""
    if device == "cuda":
        from tasks.device import pick_device

        pick_device(device)


def check_sources(params: Params) -> None:
    """Each source must be a regular file, and must exist unless the demo stage writes it."""
    for index, source in enumerate(params.data.sources):
        key = f"data.sources[{index}].path"
        found = _stat(key, source.path)
        if found is None:
            if params.data.demo is None:
                raise ConfigError(f"{key}: {show(source.path)} does not exist")
            continue
        if stat.S_ISDIR(found.st_mode):
            raise ConfigError(f"{key}: {show(source.path)} is a directory, not a table file")
        problem = special_file_problem(found.st_mode, "source")
        if problem is not None:
            raise ConfigError(f"{key}: {show(source.path)}: {problem}")


def _directories(params: Params) -> list[tuple[str, str]]:
    """(key, path) of every setting that names a directory fuseline reads or writes."""
    from tasks.modalities import embedded

    roots = [
        (f"data.{plugin.name}_root", str(root))
        for plugin in embedded()
        if plugin.columns(params.data) and (root := plugin.root(params.data)) is not None
    ]
    return [
        *roots,
        ("cache.dir", params.cache.dir),
        ("schedule.registry", params.schedule.registry),
        ("monitor.output", params.monitor.output),
    ]


def check_directory(key: str, path: str) -> None:
    """A setting naming a directory: if something is there, it must be a directory."""
    found = _stat(key, path)
    if found is not None and not stat.S_ISDIR(found.st_mode):
        raise ConfigError(f"{key}: {show(path)} is a file, not a directory")


def check_registry(registry: str, layout: Layout) -> None:
    """The registry must not lie inside models/, also through a symlink: promotion copies models/ into it."""
    models = Path(os.path.realpath(layout.models))
    if Path(os.path.realpath(registry)).is_relative_to(models):
        raise ConfigError(
            f"schedule.registry: {show(registry)} lies inside {show(layout.models)} (through a link), "
            "which every promotion copies into the registry; name a directory outside it"
        )


def check_cluster(runtime: RuntimeConfig, timeout: float = CONNECT_TIMEOUT) -> None:
    """The cluster at `runtime.address` must accept a connection within `timeout` seconds.

    Name lookup has no timeout of its own, so the lookup and the connection run on a daemon
    thread that is abandoned, not waited for, when the time is up.
    """
    endpoint = cluster_endpoint(runtime)
    if endpoint is None:
        return
    outcome: list[str | None] = []
    worker = threading.Thread(target=lambda: outcome.append(_connect(endpoint, timeout)), daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    problem = outcome[0] if outcome else f"no answer within {timeout:g} s"
    if problem is not None:
        raise ConfigError(
            f"runtime.address: nothing answers at {runtime.address} ({problem}); start the "
            f"{runtime.task_runner} cluster first, or remove the address to start a local one per run"
        )


def _connect(endpoint: tuple[str, int], timeout: float) -> str | None:
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except socket.gaierror as err:
        return f"unknown host: {err.strerror}"
    except OSError as err:
        return err.strerror or str(err)


def _stat(key: str, path: str) -> os.stat_result | None:
    """os.stat of a setting's path, None when absent; an unusable name is a ConfigError naming the key."""
    try:
        return probe(path, ConfigError, "configured")
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from None
