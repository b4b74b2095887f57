"""Shared fixtures: tiny params, and one Prefect test server for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_params(rows: int = 200, **overrides: dict) -> dict:
    """The repo's params.yaml with a small demo dataset, plus per-section overrides."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["demo"]["rows"] = rows
    for section, values in overrides.items():
        params[section] = {**params.get(section, {}), **values}
    return params


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A temporary Prefect server, started once per session; flows in tests report to it.

    Its URL is also handed to subprocesses (dvc repro), which would otherwise each start
    their own temporary server.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    previous = os.environ.pop("PREFECT_API_URL", None)
    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())
    if previous is not None:
        os.environ["PREFECT_API_URL"] = previous
