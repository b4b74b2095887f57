"""Retry policy for I/O tasks: retry what may be transient, never a user's input error."""

from __future__ import annotations

from typing import Any

from tasks.errors import FuselineError


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: a DataError or ConfigError will fail the same way again."""
    try:
        state.result()
    except FuselineError:
        return False
    except Exception:  # noqa: BLE001 - anything else (I/O, network) may pass next time
        return True
    return True


IO_RETRIES = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": is_transient}
