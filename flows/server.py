"""A long-lived local Prefect server per checkout (UI + API on 127.0.0.1).

Started once and reused by every stage process (`configure_prefect`, below), so `dvc repro` does
not pay a temporary server's start-up per stage, and all runs show up in one UI.

Two clones on one machine must not share a server: each would show the other's runs and
serve the other's deployments. So a checkout's server is the one its own state file,
`.prefect/server.json`, records (pid, port, the checkout's absolute path), and only while
that process lives and the server on that port says its PREFECT_HOME is this checkout's
`.prefect`; never whatever happens to answer on 4200. A second checkout's server takes the
next free port from 4200 (or the one asked for) and records it there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flows._runtime import DEFAULT_HOST, DEFAULT_PORT, local_api_url, local_opener, parse_port, server_is_up
from tasks.atomic import process_alive
from tasks.errors import ConfigError, FuselineError

STATE_DIR = Path(".prefect")
STATE_FILE = "server.json"
PORTS_TRIED = 100  # from DEFAULT_PORT up, when no port is asked for


@dataclass(frozen=True)
class ServerState:
    """What a checkout's `.prefect/server.json` records about its server."""

    pid: int
    port: int
    checkout: str  # absolute path of the checkout that started it

    @property
    def api_url(self) -> str:
        return local_api_url(self.port)

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


@dataclass(frozen=True)
class Started:
    """This checkout's server after `ensure_server`."""

    state: ServerState
    started: bool  # False: it was already running
    note: str = ""  # why it is not on the first port tried


def checkout_of(state_dir: str | os.PathLike[str]) -> Path:
    """The checkout a state directory belongs to (the directory holding `.prefect`)."""
    return Path(state_dir).resolve().parent


def requested_port(port: int | None = None) -> int | None:
    """The port asked for: `port` (--port), else $FUSELINE_PREFECT_PORT, else None (any free one)."""
    if port is not None:
        return port
    text = os.environ.get("FUSELINE_PREFECT_PORT")
    return None if text is None else parse_port(text, "FUSELINE_PREFECT_PORT")


def read_state(state_dir: str | os.PathLike[str] = STATE_DIR) -> ServerState | None:
    """The recorded server, or None when nothing (readable) is recorded."""
    try:
        raw = json.loads((Path(state_dir) / STATE_FILE).read_text())
        state = ServerState(int(raw["pid"]), int(raw["port"]), str(raw["checkout"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if state.pid > 0 and 1 <= state.port <= 65535 else None


def running_server(state_dir: str | os.PathLike[str] = STATE_DIR) -> ServerState | None:
    """This checkout's server when it is up; None when no record names a live server of ours."""
    state = _recorded(state_dir)
    if state is None or not _answers_as(state.port, state_dir):
        return None
    return state


def server_home(port: int, timeout: float = 0.5) -> Path | None:
    """PREFECT_HOME of the Prefect server answering on `port` here, which tells whose it is;
    None when no Prefect server answers there."""
    try:
        with local_opener.open(f"{local_api_url(port)}/admin/settings", timeout=timeout) as response:
            home = json.loads(response.read()).get("home")
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        return None
    return Path(home) if isinstance(home, str) and home else None


def ensure_server(
    port: int | None = None,
    timeout: float = 90.0,
    state_dir: str | os.PathLike[str] = STATE_DIR,
    first_port: int = DEFAULT_PORT,
) -> Started:
    """This checkout's server, started detached unless it already runs.

    The port is `port`, else $FUSELINE_PREFECT_PORT, else the first free one from
    `first_port` up; a port held by another checkout's server is never shared. Its database
    is SQLite under `state_dir` unless PREFECT_API_DATABASE_CONNECTION_URL names another
    (Postgres: postgresql+asyncpg://user:password@host:5432/prefect); the child inherits
    this environment.
    """
    state_dir = Path(state_dir)
    wanted = requested_port(port)
    state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(state_dir):
        recorded = _recorded(state_dir)
        if recorded is not None:
            if wanted is not None and wanted != recorded.port:
                raise ConfigError(
                    f"this checkout's Prefect server already runs on port {recorded.port} (pid "
                    f"{recorded.pid}); stop it first (fuseline server stop) to move it to {wanted}"
                )
            _wait_until_up(recorded, None, timeout, state_dir)  # it may still be starting
            return Started(recorded, started=False)
        _clear(state_dir)  # a dead server's record, or one copied from another checkout
        if wanted is not None:
            refuse_taken_port(wanted)
            chosen, note = wanted, ""
        else:
            chosen, note = _free_port(first_port, state_dir)
        return Started(_spawn(chosen, timeout, state_dir), started=True, note=note)


def start_server(
    port: int | None = None, timeout: float = 90.0, state_dir: str | os.PathLike[str] = STATE_DIR
) -> str:
    """This checkout's server (started unless it runs): its API URL."""
    return ensure_server(port, timeout, state_dir).state.api_url


def stop_server(state_dir: str | os.PathLike[str] = STATE_DIR) -> bool:
    """Stop this checkout's server; True if one was stopped. A stale or copied record is removed."""
    state_dir = Path(state_dir)
    if not (state_dir / STATE_FILE).exists():
        return False
    with _locked(state_dir):
        state = _recorded(state_dir)
        _clear(state_dir)
        if state is None:
            return False
        try:
            os.killpg(state.pid, signal.SIGTERM)  # its own session: the server and any children
        except ProcessLookupError:
            return False
        _wait_gone(state.pid, timeout=10.0)
        return True


def refuse_taken_port(port: int) -> None:
    """A ConfigError when another program, or another checkout's Prefect server, holds `port`
    on our host: the server would exit at start and leave only its log to say why."""
    error = _bind_error(port)
    if error is None:
        return
    if isinstance(error, PermissionError):
        raise ConfigError(
            f"port {port}: permission denied on {DEFAULT_HOST}; use a port above 1023 (--port or "
            "FUSELINE_PREFECT_PORT)"
        )
    holder = _holder(port)
    if holder is not None:
        raise ConfigError(
            f"port {port} on {DEFAULT_HOST} is taken by {holder}; each checkout runs its own server: "
            "pick another with --port or FUSELINE_PREFECT_PORT, or set neither to take the next free port"
        )
    raise ConfigError(
        f"port {port} on {DEFAULT_HOST} is taken by a program that does not answer as a Prefect "
        f"server ({error.strerror}); pick another with --port or FUSELINE_PREFECT_PORT"
    )


# --- internals ------------------------------------------------------------------------------------


def _recorded(state_dir: str | os.PathLike[str]) -> ServerState | None:
    """The record, when it names this checkout and its process may still be our server."""
    state = read_state(state_dir)
    if state is None or Path(state.checkout) != checkout_of(state_dir):
        return None
    if not process_alive(state.pid) or _serves(state.pid, state.port) is False:
        return None
    return state


def _answers_as(port: int, state_dir: str | os.PathLike[str]) -> bool:
    home = server_home(port)
    return home is not None and home.resolve() == Path(state_dir).resolve()


def _holder(port: int) -> str | None:
    """Who the Prefect server on `port` belongs to, in words; None when none answers."""
    home = server_home(port)
    if home is None:
        return "a Prefect server" if server_is_up(local_api_url(port)) else None
    if home.name == STATE_DIR.name:
        return f"the Prefect server of the checkout {home.parent}"
    return f"a Prefect server with PREFECT_HOME {home}"


def _free_port(first: int, state_dir: Path) -> tuple[int, str]:
    """The first port from `first` up that nothing holds, and a note when it is not `first`."""
    if _bind_error(first) is not None and _answers_as(first, state_dir):
        raise ConfigError(
            f"port {first} is held by a Prefect server on this checkout's {state_dir} that "
            f"{state_dir / STATE_FILE} does not record (started by hand or by an older fuseline); "
            "stop it, then start again"
        )
    for port in range(first, first + PORTS_TRIED):
        if _bind_error(port) is None:
            if port == first:
                return port, ""
            return port, f"port {first} is taken by {_holder(first) or 'another program'}; using port {port}"
    raise ConfigError(
        f"no free port from {first} to {first + PORTS_TRIED - 1} on {DEFAULT_HOST}; pick one with --port "
        "or FUSELINE_PREFECT_PORT"
    )


def _bind_error(port: int) -> OSError | None:
    """Why a server could not listen on `port` (None: it could)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((DEFAULT_HOST, port))
        except OSError as err:
            return err
    return None


def _spawn(port: int, timeout: float, state_dir: Path) -> ServerState:
    """Start `prefect server start` on `port`, record it, and wait until it answers as ours."""
    from tasks.atomic import write_json

    url = local_api_url(port)
    env = dict(os.environ, PREFECT_HOME=str(state_dir.resolve()))
    env.pop("PREFECT_API_URL", None)
    # `--port` alone moves the API but not the address the UI calls (it would stay :4200).
    env["PREFECT_UI_API_URL"] = url
    with open(state_dir / "server.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", DEFAULT_HOST, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # survives the make/shell that started it
        )
    state = ServerState(process.pid, port, str(checkout_of(state_dir)))
    # Recorded before it answers: an interrupted start leaves a server that `stop` can find.
    write_json({"pid": state.pid, "port": state.port, "checkout": state.checkout}, state_dir / STATE_FILE)
    _wait_until_up(state, process, timeout, state_dir)
    return state


def _wait_until_up(
    state: ServerState, process: subprocess.Popen[bytes] | None, timeout: float, state_dir: Path
) -> None:
    log = state_dir / "server.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers_as(state.port, state_dir):
            return
        exited = process.poll() is not None if process is not None else not process_alive(state.pid)
        if exited:
            _clear(state_dir)
            raise FuselineError(f"the Prefect server exited at start; see {log}")
        time.sleep(0.5)
    raise FuselineError(
        f"the Prefect server (pid {state.pid}, port {state.port}) did not answer within {timeout:.0f} s; "
        f"see {log}"
    )


def _clear(state_dir: Path) -> None:
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One start or stop at a time per checkout (`make demo` beside `fuseline serve`)."""
    import fcntl  # POSIX, like the process groups the server runs in; not needed to read the state

    with open(Path(state_dir) / "server.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def _serves(pid: int, port: int) -> bool | None:
    """Whether process `pid` is `prefect server start` on `port`, from /proc; None without /proc.

    A recorded pid can outlive its server: after a reboot it may be any program's, which
    `stop` must not kill.
    """
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except FileNotFoundError:
        return False if Path("/proc/self/cmdline").exists() else None
    except OSError:
        return None
    if "prefect" not in args or "server" not in args or "--port" not in args:
        return False
    at = args.index("--port")
    return at + 1 < len(args) and args[at + 1] == str(port)


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait for a stopped server to exit, so that its port is free when this returns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reaps it when this process started it (tests, benches)
        except ChildProcessError:
            pass
        if not process_alive(pid):
            return
        time.sleep(0.1)


def configure_prefect() -> None:
    """Report to this checkout's own server when it is up; let our own loggers reach Prefect.

    Without PREFECT_API_URL, each `python -m flows.<stage>` would start its own temporary
    Prefect server (~10 s). When this checkout's server is up (`fuseline server start`, which
    `make demo` runs), stages use it instead: runs land in one UI and start in a fraction of
    that. Only the server that this checkout's `.prefect/server.json` records counts, never
    another clone's that answers on the usual port. An explicit PREFECT_API_URL wins. This
    must run before Prefect reads its settings, hence from the package's __init__.
    """
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks")
    if "PREFECT_API_URL" in os.environ:
        return
    state = running_server()
    if state is not None:
        os.environ["PREFECT_API_URL"] = state.api_url
