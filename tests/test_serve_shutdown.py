"""`fuseline serve` stopped by SIGTERM (what systemd, Docker and Kubernetes send) stops cleanly.

Prefect's own serve answered SIGTERM with "coroutine 'Runner.astop' was never awaited"
(flows/deploy.py says why). The real command runs in a subprocess against the session's
Prefect server; it registers the two deployments, says it serves them, and is stopped.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import tiny_params

READY_WITHIN = 120.0  # seconds: imports and registering two deployments on a loaded machine


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    """Stdout lines up to the first holding `needle`; fails when the process exits or time runs out."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=1.0):
                continue
            line = process.stdout.readline()
            if not line:
                break  # exited
            lines.append(line)
            if needle in line:
                return lines
    process.kill()
    _, err = process.communicate()
    raise AssertionError(f"serve never said {needle!r}:\n{''.join(lines)}\n{err}")


def test_serve_stops_on_sigterm_without_an_unawaited_coroutine(prefect_api: str, tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--params", "params.yaml"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_line(process, "served", READY_WITHIN)
        time.sleep(1.0)  # Prefect's own serve printed that before it handled SIGTERM at all
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert "never awaited" not in err, err
    assert process.returncode == 0, err
