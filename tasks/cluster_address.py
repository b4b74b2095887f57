"""What a cluster address must look like: `runtime.address` read as text, before any network.

params.yaml validation (tasks/config.py) refuses a malformed address at load; whether one
answers is tasks/preflight.py's question at `fuseline check`. Both read the address the same
way, so the syntax lives here, below both: config needs no import of preflight, which
names config's types.
"""

from __future__ import annotations

import urllib.parse

# What Dask's Client(address=...) and ray.init(address=...) take besides `scheme://host:port`.
DASK_SCHEMES = frozenset({"tcp", "tls", "ws", "wss", "ucx"})
RAY_KEYWORDS = frozenset({"auto", "local"})  # ray.init finds (or starts) the cluster itself


def address_problem(task_runner: str, address: str) -> str | None:
    """Why `address` cannot name a cluster for `task_runner`, or None when it can (static: no network)."""
    if task_runner == "ray" and address in RAY_KEYWORDS:
        return None
    example = "ray://head:10001" if task_runner == "ray" else "tcp://scheduler:8786"
    if not address or not address.isprintable() or any(c.isspace() for c in address):
        return f"{address!r} is not an address like {example}"
    schemes = {"ray"} if task_runner == "ray" else DASK_SCHEMES
    parts = urllib.parse.urlsplit(with_scheme(address))
    if "://" in address and parts.scheme not in schemes:
        return f"{address!r}: {task_runner} connects with {', '.join(sorted(schemes))}://, e.g. {example}"
    try:
        port = parts.port
    except ValueError:
        return f"{address!r}: the port must be a number from 1 to 65535"
    if not parts.hostname or not port or parts.path not in ("", "/"):
        return f"{address!r} is not host:port, e.g. {example}"
    return None


def with_scheme(address: str) -> str:
    """`host:port` as Dask reads it (tcp://), so urlsplit finds the host and port."""
    return address if "://" in address else f"tcp://{address}"
