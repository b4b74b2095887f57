"""Round three of hostile input (issue 23), class 2: special files named as inputs.

`fuseline predict --input` on a FIFO with one writer hung for ever: pandas read the rows,
then the CSV header check opened the path again and waited for a writer that had gone.
/dev/zero as an input or as params.yaml was read until memory ran out. Every input a user
names (predict's and monitor's `--input`, the sources in params.yaml, params.yaml itself)
is now read only from a regular file, opened once; anything else is refused by its type,
in one line, before a byte is read (tasks/pathcheck.py).

Each test that would hang on the old code carries a timeout, so a regression fails instead
of stopping the suite; FIFO writers are threads that the tests release and join.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tasks.config import DataConfig, SourceConfig, load_params
from tasks.data.ingest import ingest_sources
from tasks.data.sources import read_source
from tasks.errors import ConfigError, DataError
from tests.bad_inputs.project import Project
from tests.bad_inputs.test_round_three_settings import refused
from tests.conftest import tiny_params
from tests.tasks.serve.test_predict_output import write_tiny_bundle

HANG = pytest.mark.timeout(120, method="signal")  # the old code blocked here for ever
CSV = b"item_id,price\na,1.0\nb,2.0\n"


@contextmanager
def fifo_with_writer(path: Path, payload: bytes) -> Iterator[Path]:
    """A FIFO at `path` whose one writer sends `payload` to the first reader, then goes away."""
    os.mkfifo(path)

    def write() -> None:
        try:
            with open(path, "wb") as pipe:  # blocks until a reader opens the other end
                pipe.write(payload)
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        yield path
    finally:
        if writer.is_alive():  # nobody read: open the other end so the writer can finish
            reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            writer.join(5)
            os.close(reader)
        writer.join(5)
        assert not writer.is_alive()


@contextmanager
def unix_socket(path: Path) -> Iterator[Path]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        yield path


@pytest.fixture()
def predict_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real (tiny, tabular) bundle in models/ and params.yaml: the working directory."""
    write_tiny_bundle(tmp_path / "models")
    params = tiny_params(cache={"dir": ".cache/features"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- predict and monitor --input --------------------------------------------------------------------


@HANG
def test_predict_refuses_a_fifo_input_with_a_writer_in_one_line(
    predict_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: the old code read the rows, then blocked reopening the pipe."""
    with fifo_with_writer(predict_project / "new.csv", CSV):
        line = refused(["predict", "--input", "new.csv", "--output", "p.parquet"], capsys)
    assert "file new.csv: the input path is a named pipe (FIFO), not a regular file" in line
    assert not (predict_project / "p.parquet").exists()


@HANG
@pytest.mark.parametrize(
    ("device", "kind"), [("/dev/zero", "a character device"), ("/dev/urandom", "a character device")]
)
def test_predict_refuses_a_device_input_before_reading_it(
    predict_project: Path, capsys: pytest.CaptureFixture[str], device: str, kind: str
) -> None:
    os.symlink(device, predict_project / "new.csv")  # a link to a device is that device
    for name in (device, "new.csv"):
        line = refused(["predict", "--input", name, "--output", "p.parquet"], capsys)
        assert f"the input path is {kind}, not a regular file" in line


@HANG
def test_monitor_refuses_a_fifo_or_a_socket_input_before_its_flow_starts(
    predict_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fifo_with_writer(predict_project / "batch.csv", CSV):
        line = refused(["monitor", "--input", "batch.csv"], capsys)
    assert "batch.csv: the input path is a named pipe (FIFO)" in line
    with unix_socket(predict_project / "batch.sock"):
        line = refused(["monitor", "--input", "batch.sock"], capsys)
    assert "batch.sock: the input path is a socket" in line
    line = refused(["monitor", "--input", "/dev/zero"], capsys)
    assert "the input path is a character device" in line


# --- sources in params.yaml ----------------------------------------------------------------------


@HANG
def test_ingest_refuses_a_fifo_source_that_the_old_code_read_twice(tmp_path: Path) -> None:
    """The writer sends a valid table once; the old header check then waited for a second writer."""
    data = DataConfig(
        sources=[SourceConfig(path=str(tmp_path / "items.csv"))], id="item_id", target="label",
        task="binary", columns={"numeric": ["price"]},
    )  # fmt: skip
    payload = b"item_id,label,price\na,no,1.0\nb,yes,2.0\n"
    with fifo_with_writer(tmp_path / "items.csv", payload), pytest.raises(DataError) as info:
        ingest_sources(data, tmp_path / "raw")
    assert "items.csv: the source path is a named pipe (FIFO), not a regular file" in str(info.value)
    assert "\n" not in str(info.value)


@HANG
@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_a_device_source_is_refused_in_every_format(fmt: str) -> None:
    with pytest.raises(DataError, match="file /dev/zero: the source path is a character device"):
        read_source(SourceConfig(path="/dev/zero", format=fmt))


def test_a_socket_source_is_refused(tmp_path: Path) -> None:
    with unix_socket(tmp_path / "items.csv"), pytest.raises(DataError, match="the source path is a socket"):
        read_source(SourceConfig(path=str(tmp_path / "items.csv")))


@HANG
def test_fuseline_check_names_a_fifo_source_by_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """DVC hashes the sources after `fuseline check`: a pipe there must stop at the check."""
    root = Project(tmp_path / "project").write()
    (root / "items.csv").unlink()
    monkeypatch.chdir(root)
    with fifo_with_writer(root / "items.csv", CSV):
        line = refused(["check", "--params", "params.yaml"], capsys)
    assert "params.yaml: data.sources[0].path: items.csv: the source path is a named pipe (FIFO)" in line


def test_fuseline_check_names_a_missing_source_by_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without `data.demo` nothing will write it: a missing source fails the check, not ingest."""
    root = Project(tmp_path / "project").write()
    (root / "items.csv").unlink()
    monkeypatch.chdir(root)
    line = refused(["check", "--params", "params.yaml"], capsys)
    assert "fuseline: params.yaml: data.sources[0].path: items.csv does not exist" in line


def test_a_source_is_opened_once_even_when_it_needs_a_second_decoding_pass(tmp_path: Path) -> None:
    """Latin-1 bytes force a second pass and CSV has a header check: one open serves all three."""
    source = tmp_path / "items.csv"
    source.write_bytes(b"item_id,title\na,caf\xe9\nb,tea\n")
    opened = _opens_of(source, lambda: read_source(SourceConfig(path=str(source))))
    assert opened == 1


# --- params.yaml --------------------------------------------------------------------------------------


@HANG
def test_a_params_file_that_is_a_fifo_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One read would work, but predict and the stages read params.yaml again: the next one blocks."""
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_dump(tiny_params()).encode()
    with fifo_with_writer(tmp_path / "params.yaml", params):
        line = refused(["check", "--params", "params.yaml"], capsys)
    assert "fuseline: params.yaml: the params path is a named pipe (FIFO)" in line


@HANG
def test_a_params_file_that_is_a_device_is_refused_before_reading() -> None:
    with pytest.raises(ConfigError, match="/dev/zero: the params path is a character device"):
        load_params("/dev/zero")


def test_a_regular_params_file_is_read_with_one_open(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params()))
    assert _opens_of(path, lambda: load_params(path)) == 1
    assert load_params(path).data.id == "item_id"


def _opens_of(path: Path, action: Callable[[], object]) -> int:
    """How many times `action` opens `path` (Python's `open` audit event: builtins.open and os.open)."""
    target, seen, active = os.fspath(path), [], [True]

    def hook(event: str, args: tuple) -> None:
        if active[0] and event == "open" and args and isinstance(args[0], str | os.PathLike):
            if os.fspath(args[0]) == target:
                seen.append(event)

    sys.addaudithook(hook)  # cannot be removed: the flag switches it off
    try:
        action()
    finally:
        active[0] = False
    return len(seen)
