"""Process set-up shared by every flow entry point.

Without PREFECT_API_URL, each `python -m flows.<stage>` would start its own temporary Prefect
server (~10 s). When a local fuseline server is up (`fuseline server start`, which
`make demo` runs), stages use it instead: runs land in one UI and start in a fraction of that.
This must run before Prefect reads its settings, hence from the package's __init__.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200


def local_api_url(port: int | None = None) -> str:
    port = port or int(os.environ.get("FUSELINE_PREFECT_PORT", DEFAULT_PORT))
    return f"http://{DEFAULT_HOST}:{port}/api"


def server_is_up(api_url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def configure_prefect() -> None:
    """Use the local shared server when one answers; let our own loggers reach Prefect."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks")
    if "PREFECT_API_URL" in os.environ:
        return
    url = local_api_url()
    if server_is_up(url):
        os.environ["PREFECT_API_URL"] = url
