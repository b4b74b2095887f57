"""A warm process that runs `dvc repro`'s stages by forking, so each stage skips its start-up.

Every dvc.yaml stage is `python -m flows.<stage>`, and each such process spends 3-6 s
importing torch, pandas, Prefect and our own modules before doing a fraction of a second of
work (a scheduled retrain on a 5 % drop of rows ran eight of them: most of its time). While a
retrain runs `dvc repro` (flows/deploy.py), a host started beside it has imported all of that
once; each stage process, on importing the `flows` package, hands its command over through
a Unix socket and the host forks a child that runs the stage as `python -m` would: the same
module as `__main__`, arguments, working directory, environment and standard streams (passed
as file descriptors), so output, exit status and DVC's view of the stage are unchanged.

The stage process stays alive until the child ends, forwards SIGINT/SIGTERM to it and exits
with its status. It runs the stage itself, as before, whenever anything is off: no host, a
host that is gone or busy importing something else, another working directory, another
interpreter or different Prefect settings (those are read when Prefect is imported, so the
child must inherit the ones the stage would have read). The host never runs stage code in
its own process, so nothing one stage does can leak into the next: each child starts from
the host's state straight after its imports, with one thread (checked before forking).

This module's top level imports only the standard library: the hand-over runs on every
stage start, before anything heavy is imported.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import NoReturn

ENV_VAR = "FUSELINE_STAGE_HOST"  # the host's socket path, set for `dvc repro` by its starter
# `flows.params` is left out: it imports neither Prefect nor the encoders, and running it
# itself overlaps the host's imports instead of waiting for them.
STAGE_MODULES = (
    "flows.demo",
    "flows.ingest",
    "flows.align",
    "flows.extract",
    "flows.train",
    "flows.evaluate",
)
# Imported lazily by torch on first use, yet paid by most stages: building a head on the meta
# device (every bundle load checks shapes that way) goes through torch._refs, which imports
# torch._dynamo, 1.3 s.
_ALSO_WARM = ("torch._dynamo",)
_STREAMS = (0, 1, 2)
_HOST_MAIN = "import sys; from flows._stage_host import serve; serve(sys.argv[1])"
_FORKED = " in pid "  # the host log's mark of a stage it ran


def hand_over_to_stage_host() -> None:
    """Run this `python -m flows.<stage>` process's stage in the host and exit with its status.

    Returns (and the stage runs here) when no host serves this process.
    """
    path = os.environ.get(ENV_VAR)
    command = _module_command(getattr(sys, "orig_argv", []))
    if not path or command is None or command[0] not in STAGE_MODULES:
        return
    try:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(path)
        request = {
            "module": command[0],
            "argv": command[1],
            "orig_argv": list(sys.orig_argv),
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "executable": sys.executable,
        }
        socket.send_fds(connection, [json.dumps(request).encode() + b"\n"], list(_STREAMS))
        replies = _lines(connection)
        first = next(replies, None)
    except OSError:
        return
    if first is None or "pid" not in first:
        connection.close()
        return  # declined or gone before the stage started: run it here
    _forward_signals(int(first["pid"]))
    status = next(replies, None)
    for _ in replies:  # wait for the child's end (EOF), so its last output is written
        pass
    if status is None or "exit" not in status:
        print("fuseline: the stage's process ended without an exit status (killed?)", file=sys.stderr)
        os._exit(1)
    os._exit(int(status["exit"]))


def _module_command(orig_argv: list[str]) -> tuple[str, list[str]] | None:
    """(module, its arguments) of a `python [options] -m module args` command line."""
    for index, arg in enumerate(orig_argv[1:], start=1):
        if arg == "-m" and index + 1 < len(orig_argv):
            return orig_argv[index + 1], orig_argv[index + 2 :]
        if arg == "-c" or not arg.startswith("-"):
            return None
    return None


def _lines(connection: socket.socket) -> Iterator[dict]:
    """The JSON messages on a connection, one per line, until it closes."""
    buffer = b""
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)


def _forward_signals(pid: int) -> None:
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)


# The host side -------------------------------------------------------------------------


@contextmanager
def stage_host(env: dict[str, str], cwd: str | None = None) -> Iterator[dict[str, str]]:
    """A host for the stages a command run with the returned environment starts; stopped after.

    Best effort: when the host cannot start, the stages find no socket and run as before.
    """
    import subprocess
    import tempfile
    import time

    folder = tempfile.mkdtemp(prefix="fuseline-host-")
    path = os.path.join(folder, "host.sock")
    hosted = dict(env, **{ENV_VAR: path})
    with open(os.path.join(folder, "host.log"), "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _HOST_MAIN, path],
            env=hosted,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 5.0
        while not os.path.exists(path) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        yield hosted
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def hosted_stages(env: dict[str, str]) -> list[str]:
    """The stages the host of `env` has run so far (its log; empty without a host)."""
    path = env.get(ENV_VAR)
    try:
        log = open(os.path.join(os.path.dirname(path), "host.log")).read() if path else ""
    except OSError:
        return []
    forked = [line for line in log.splitlines() if _FORKED in line]
    return [line.split(_FORKED)[0].removeprefix("stage host: ") for line in forked]


def serve(path: str) -> None:
    """Listen first, then import the stages in pipeline order between requests; fork per stage.

    Importing every stage's modules takes about 7 s, but the first stage (ingest) needs only
    half of that: a request is served as soon as its own module is imported, and the host
    imports the later stages' modules while the earlier ones run (on the other core).
    """
    import threading

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    pending = [*STAGE_MODULES, *_ALSO_WARM]
    host = _identity(dict(os.environ), os.getcwd())
    parent = os.getppid()
    while os.getppid() == parent:  # the starter gone: stop
        _reap()
        listener.settimeout(0.0 if pending else 1.0)
        try:
            connection, _ = listener.accept()
        except (TimeoutError, BlockingIOError):
            if pending:
                _warm([pending.pop(0)])
            continue
        connection.settimeout(None)
        try:
            request, streams = _receive(connection)
        except (OSError, ValueError) as err:
            print(f"stage host: unreadable request: {err}", file=sys.stderr, flush=True)
            connection.close()
            continue
        if request["module"] in pending:
            _warm([request["module"]])
            pending.remove(request["module"])
        if threading.active_count() != 1:  # forking with other threads alive can deadlock the child
            _close(connection, streams)
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            listener.close()
            _run_child(connection, request, streams, host)  # never returns
        command = " ".join([request["module"], *request["argv"]])
        print(f"stage host: {command}{_FORKED}{pid}", flush=True)
        _close(connection, streams)


def _warm(modules: list[str]) -> None:
    """Import `modules` here, so children forked from now on start with them."""
    import gc
    import importlib

    for module in modules:
        importlib.import_module(module)
    gc.collect()
    gc.freeze()  # the imported objects stay shared with the children instead of copied on write


def _identity(env: dict[str, str], cwd: str) -> dict[str, object]:
    """What must match between the host and a stage for a fork to be that stage's process."""
    return {
        "cwd": os.path.realpath(cwd),
        "executable": os.path.realpath(sys.executable),
        "prefect": {key: value for key, value in env.items() if key.startswith("PREFECT_")},
        "pythonpath": env.get("PYTHONPATH", ""),
    }


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    data, streams, _flags, _address = socket.recv_fds(connection, 1 << 20, len(_STREAMS))
    while not data.endswith(b"\n"):
        chunk = connection.recv(1 << 20)
        if not chunk:
            raise ValueError("the request ended early")
        data += chunk
    if len(streams) != len(_STREAMS):
        raise ValueError(f"expected {len(_STREAMS)} stream descriptors, got {len(streams)}")
    return json.loads(data), streams


def _close(connection: socket.socket, streams: list[int]) -> None:
    connection.close()
    for descriptor in streams:
        os.close(descriptor)


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass
    except ChildProcessError:
        pass


def _run_child(connection: socket.socket, request: dict, streams: list[int], host: dict[str, object]) -> None:
    """In the forked child: become the stage's process, run it, report its status, exit."""
    import runpy
    import traceback

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(request["env"])
    from flows.server import configure_prefect

    configure_prefect()  # what the stage's own `import flows` would have set
    mine = _identity(dict(os.environ), request["cwd"])
    if mine != host or os.path.realpath(request["executable"]) != host["executable"]:
        differs = sorted(key for key in host if host[key] != mine.get(key))
        differs_text = ", ".join(differs) or "executable"
        why = f"{request['module']} declined: its {differs_text} differs from the host's"
        print(f"stage host: {why}", flush=True)  # still the host's log: the streams are not ours yet
        _send(connection, {"declined": why})
        os._exit(0)
    for target, descriptor in zip(_STREAMS, streams, strict=True):
        os.dup2(descriptor, target)
        os.close(descriptor)
    os.chdir(request["cwd"])
    sys.orig_argv = request["orig_argv"]
    sys.argv = ["-m", *request["argv"]]  # run_module puts the module's path in argv[0]
    sys.modules.pop(request["module"], None)  # as under `python -m`: only `__main__` holds the stage
    _send(connection, {"pid": os.getpid()})
    try:
        with _without_heartbeats():
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:  # noqa: BLE001 - the stage's own failure: report it as python would
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    _send(connection, {"exit": code})
    _exit_without_teardown(code)  # the connection closes with the process: its EOF says we are done


def _without_heartbeats() -> AbstractContextManager[object]:
    """Prefect settings for a hosted stage's flow run: no heartbeat thread.

    A flow run's heartbeat thread sleeps in one-second steps and the engine joins it when the
    flow returns, so every stage waited up to a second for it (0.5 s on average, six stages a
    retrain). The heartbeat exists to flag a run whose process died; a hosted stage's death is
    already seen twice: `dvc repro` fails, and the retrain flow or `fuseline repro` above it
    (which keep their heartbeats) fails with it.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def _exit_without_teardown(code: int) -> NoReturn:
    """Exit as the interpreter would, minus its teardown of every module and object.

    Tearing down a process that has imported torch, pandas and Prefect took 1.1 s, after the
    stage's work and its outputs were complete. The steps of a normal exit that matter still
    run: non-daemon threads are joined, the atexit handlers (Prefect draining its log and event
    workers, logging's flush) run, and the standard streams are flushed. Outputs never wait on
    the teardown: every stage writes them through tasks.atomic (flushed, fsynced, renamed).
    """
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # what a normal exit runs first
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _send(connection: socket.socket, message: dict) -> None:
    try:
        connection.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass  # the stage process is gone; the child still finishes its work
