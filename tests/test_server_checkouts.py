"""Two checkouts on one machine, each with its own Prefect server (flows/server.py).

Checkout A's server is a stand-in: a tiny HTTP server on a free port that answers as a
Prefect server does (`/api/health`, and `/api/admin/settings` naming its PREFECT_HOME, A's
`.prefect`), with A's state file beside it. Checkout B's server is real, started once for
the module (10-30 s), because what is checked is where B's start puts it and what it writes.
The first port B tries is A's, as 4200 is when two clones run side by side.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flows.cli import main
from flows.server import (
    STATE_FILE,
    ServerState,
    Started,
    configure_prefect,
    ensure_server,
    read_state,
    running_server,
    server_home,
    stop_server,
)
from tasks.errors import ConfigError


@dataclass(frozen=True)
class Checkout:
    root: Path

    @property
    def state_dir(self) -> Path:
        return self.root / ".prefect"

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE


@dataclass(frozen=True)
class First:
    checkout: Checkout
    port: int
    state_bytes: bytes  # A's record as A wrote it


def _answering_as(home: Path) -> type[BaseHTTPRequestHandler]:
    """Replies as a Prefect server whose PREFECT_HOME is `home`."""
    replies = {"/api/health": b"true", "/api/admin/settings": json.dumps({"home": str(home)}).encode()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            body = replies.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body or b"{}")

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _write_state(state_dir: Path, pid: int, port: int, checkout: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_FILE).write_text(json.dumps({"pid": pid, "port": port, "checkout": str(checkout)}))


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Iterator[First]:
    """Checkout A, its server answering on a free port and recorded in A's state file."""
    checkout = Checkout(tmp_path_factory.mktemp("checkout-a").resolve())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _answering_as(checkout.state_dir))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = int(server.server_address[1])
    _write_state(checkout.state_dir, os.getpid(), port, checkout.root)
    yield First(checkout, port, checkout.state_file.read_bytes())
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def second(first: First, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Checkout, Started, int]]:
    """Checkout B's real server, started while A's holds the first port tried, over the record
    of a B server that died; (B, what the start returned, the dead server's pid)."""
    checkout = Checkout(tmp_path_factory.mktemp("checkout-b").resolve())
    dead = _dead_pid()
    _write_state(checkout.state_dir, dead, first.port + 1, checkout.root)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("FUSELINE_PREFECT_PORT", raising=False)
        started = ensure_server(timeout=240, state_dir=checkout.state_dir, first_port=first.port)
    yield checkout, started, dead
    stop_server(checkout.state_dir)


@pytest.fixture()
def no_api_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PREFECT_API_URL, and any that configure_prefect sets is removed after the test."""
    monkeypatch.setenv("PREFECT_API_URL", "set-by-the-test")
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.delenv("FUSELINE_PREFECT_PORT", raising=False)


def test_a_checkout_does_not_report_to_another_checkouts_server_on_its_port(
    first: First, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_api_url: None
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FUSELINE_PREFECT_PORT", str(first.port))  # answers /health there
    configure_prefect()
    assert "PREFECT_API_URL" not in os.environ


def test_a_record_copied_from_another_checkout_is_not_used(
    first: First, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_api_url: None
) -> None:
    (tmp_path / ".prefect").mkdir()
    shutil.copy(first.checkout.state_file, tmp_path / ".prefect" / STATE_FILE)  # cp -r of checkout A
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FUSELINE_PREFECT_PORT", str(first.port))
    configure_prefect()
    assert "PREFECT_API_URL" not in os.environ


def test_an_explicit_port_held_by_another_checkouts_server_is_refused(
    first: First, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FUSELINE_PREFECT_PORT", str(first.port))
    refusal = f"taken by the Prefect server of the checkout {first.checkout.root}"
    with pytest.raises(ConfigError, match=re.escape(refusal)):
        ensure_server(timeout=5)
    assert not (tmp_path / ".prefect" / STATE_FILE).exists()


def test_a_dead_servers_record_is_removed(tmp_path: Path) -> None:
    _write_state(tmp_path / ".prefect", _dead_pid(), 4200, tmp_path.resolve())
    assert running_server(tmp_path / ".prefect") is None
    assert stop_server(tmp_path / ".prefect") is False
    assert not (tmp_path / ".prefect" / STATE_FILE).exists()


def test_the_second_checkouts_server_takes_the_next_free_port_and_says_why(
    first: First, second: tuple[Checkout, Started, int]
) -> None:
    _, started, _ = second
    assert started.started and started.state.port > first.port
    assert started.note == (
        f"port {first.port} is taken by the Prefect server of the checkout {first.checkout.root}; "
        f"using port {started.state.port}"
    )


def test_starting_the_second_leaves_the_firsts_record_as_it_was(
    first: First, second: tuple[Checkout, Started, int]
) -> None:
    assert first.checkout.state_file.read_bytes() == first.state_bytes


def test_the_second_records_its_own_server_over_the_dead_ones_record(
    second: tuple[Checkout, Started, int],
) -> None:
    checkout, started, dead = second
    assert read_state(checkout.state_dir) == started.state
    assert started.state == ServerState(started.state.pid, started.state.port, str(checkout.root))
    assert started.state.pid != dead
    assert server_home(started.state.port) == checkout.state_dir


def test_starting_again_says_it_runs_and_keeps_the_record(second: tuple[Checkout, Started, int]) -> None:
    checkout, started, _ = second
    before = checkout.state_file.read_bytes()
    again = ensure_server(timeout=30, state_dir=checkout.state_dir)
    assert again == Started(started.state, started=False)
    assert checkout.state_file.read_bytes() == before


def test_starting_on_another_port_while_it_runs_is_refused(second: tuple[Checkout, Started, int]) -> None:
    checkout, started, _ = second
    with pytest.raises(ConfigError, match=f"already runs on port {started.state.port}"):
        ensure_server(started.state.port + 7, timeout=30, state_dir=checkout.state_dir)
    assert read_state(checkout.state_dir) == started.state


def test_stages_in_the_second_checkout_report_to_its_own_server(
    second: tuple[Checkout, Started, int], monkeypatch: pytest.MonkeyPatch, no_api_url: None
) -> None:
    checkout, started, _ = second
    monkeypatch.chdir(checkout.root)
    configure_prefect()
    assert os.environ["PREFECT_API_URL"] == started.state.api_url


def test_ui_prints_this_checkouts_address(
    second: tuple[Checkout, Started, int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_api_url: None,
) -> None:
    checkout, started, _ = second
    monkeypatch.chdir(checkout.root)
    main(["ui"])
    out = capsys.readouterr().out
    assert f"(already running, pid {started.state.pid}): {started.state.ui_url} " in out
    assert f"export PREFECT_API_URL={started.state.api_url}" in out


# Last: it stops B's server, which the tests above use.
def test_stopping_the_second_stops_only_its_own_server(
    first: First, second: tuple[Checkout, Started, int]
) -> None:
    checkout, started, _ = second
    assert stop_server(checkout.state_dir) is True
    assert server_home(started.state.port) is None and not checkout.state_file.exists()
    assert server_home(first.port) == first.checkout.state_dir
    assert first.checkout.state_file.read_bytes() == first.state_bytes
