"""A user string logged through our loggers cannot forge a line or drive the terminal."""

from __future__ import annotations

import logging

import pytest

import tasks  # noqa: F401  (importing the package installs the record factory)

HOSTILE = ["col\nINFO forged line", "label\r\x1b[2Jcleared", "name\u202eevil", "tab\there"]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("logger", ["tasks.data.align", "flows.monitor", "prefect.flow_runs"])
def test_our_log_lines_escape_user_strings(caplog: pytest.LogCaptureFixture, logger: str, value: str) -> None:
    with caplog.at_level(logging.INFO, logger=logger):
        logging.getLogger(logger).info("column %s was dropped", value)
    message = caplog.records[-1].getMessage()
    assert message.isprintable() and repr(value) in message


def test_other_libraries_records_are_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="some.library"):
        logging.getLogger("some.library").info("%s", "two\nlines")
    assert caplog.records[-1].getMessage() == "two\nlines"
