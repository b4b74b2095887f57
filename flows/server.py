"""A long-lived local Prefect server for this project (UI + API on 127.0.0.1).

Started once and reused by every stage process (see flows/_runtime.py), so `dvc repro` does
not pay a temporary server's start-up per stage, and all runs show up in one UI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows._runtime import DEFAULT_HOST, local_api_url, server_is_up

STATE_DIR = Path(".prefect")


def start_server(port: int | None = None, timeout: float = 90.0, state_dir: Path = STATE_DIR) -> str:
    """Start the server detached unless one already answers; return its API URL.

    Its database is SQLite under `state_dir` unless PREFECT_API_DATABASE_CONNECTION_URL names
    another (Postgres: postgresql+asyncpg://user:password@host:5432/prefect); the child
    inherits this environment.
    """
    url = local_api_url(port)
    if server_is_up(url):
        return url
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_HOME=str(state_dir.resolve()))
    env.pop("PREFECT_API_URL", None)
    # `--port` alone moves the API but not the address the UI calls (it would stay :4200).
    env["PREFECT_UI_API_URL"] = url
    port_str = url.rsplit(":", 1)[1].split("/", 1)[0]
    log = open(state_dir / "server.log", "ab")  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", DEFAULT_HOST, "--port", port_str],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # survives the make/shell that started it
    )
    (state_dir / "server.pid").write_text(str(process.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server_is_up(url):
            return url
        if process.poll() is not None:
            raise RuntimeError(f"Prefect server exited early; see {state_dir / 'server.log'}")
        time.sleep(0.5)
    raise RuntimeError(
        f"Prefect server did not answer within {timeout:.0f} s; see {state_dir / 'server.log'}"
    )


def stop_server(state_dir: Path = STATE_DIR) -> bool:
    """Stop the server this project started; True if one was stopped."""
    pid_file = Path(state_dir) / "server.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    pid_file.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True
