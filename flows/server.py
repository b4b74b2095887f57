"""A long-lived local Prefect server for this project (UI + API on 127.0.0.1).

Started once and reused by every stage process (see flows/_runtime.py), so `dvc repro` does
not pay a temporary server's start-up per stage, and all runs show up in one UI.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from flows._runtime import DEFAULT_HOST, local_api_url, server_is_up
from tasks.errors import ConfigError, FuselineError

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
    port_str = url.rsplit(":", 1)[1].split("/", 1)[0]
    refuse_taken_port(int(port_str))
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_HOME=str(state_dir.resolve()))
    env.pop("PREFECT_API_URL", None)
    # `--port` alone moves the API but not the address the UI calls (it would stay :4200).
    env["PREFECT_UI_API_URL"] = url
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
            raise FuselineError(f"the Prefect server exited at start; see {state_dir / 'server.log'}")
        time.sleep(0.5)
    raise FuselineError(
        f"the Prefect server did not answer within {timeout:.0f} s; see {state_dir / 'server.log'}"
    )


def refuse_taken_port(port: int) -> None:
    """A ConfigError when another program holds `port` on our host (a Prefect server there was
    reused already): the server would exit at start and leave only its log to say why."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((DEFAULT_HOST, port))
        except PermissionError:
            raise ConfigError(
                f"port {port}: permission denied on {DEFAULT_HOST}; use a port above 1023 (--port or "
                "FUSELINE_PREFECT_PORT)"
            ) from None
        except OSError as err:
            raise ConfigError(
                f"port {port} on {DEFAULT_HOST} is taken by a program that does not answer as a Prefect "
                f"server ({err.strerror}); pick another with --port or FUSELINE_PREFECT_PORT"
            ) from None


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
