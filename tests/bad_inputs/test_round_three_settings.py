"""Round three of hostile input (issue 23), class 5: settings that passed `fuseline check` and failed later.

`schedule.cron: "61 25 * * *"` passed check and crashed `fuseline serve` with Prefect's
`ValueError: Invalid cron string`. Every value whose meaning is known before work starts is
now checked by `fuseline check` (and before `serve` and `retrain`), one `fuseline:` line
naming the key: statically when params.yaml loads (cron, time zone, registry path, cluster
address form; tasks/config.py, tasks/cron.py) and against this machine (device, paths that
must be directories or regular files, a registry inside models/ through a link, a cluster
that must answer; tasks/preflight.py). Ports of the local Prefect server are checked when
`fuseline server start` / `ui` / `serve` would take one (flows/server.py).

Cron expressions are an open class, so Hypothesis generates them: from the grammar
fuseline documents (each must load exactly when Prefect accepts and can schedule it) and
mutated with stray tokens (whatever loads, Prefect accepts and schedules).
"""

from __future__ import annotations

import copy
import datetime
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from flows.cli import main
from tasks.config import MonitorConfig, ScheduleConfig, params_from_dict
from tasks.errors import ConfigError
from tests.bad_inputs.project import PARAMS, Project

# --- helpers -------------------------------------------------------------------------------------------


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `fuseline ARGV`; assert exit 2 with one stderr line and no traceback; return the line."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fuseline: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """A valid 40-row project (CSV, real JPEGs); the working directory. Tests edit `params`, then write."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FUSELINE_PREFECT_PORT", raising=False)
    return Project(tmp_path)


def check(project: Project, capsys: pytest.CaptureFixture[str]) -> str:
    """`fuseline check` on the written project, refused: its one line."""
    project.write()
    return refused(["check", "--params", "params.yaml"], capsys)


def passes_check(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    project.write()
    main(["check", "--params", "params.yaml"])
    assert "params.yaml: valid" in capsys.readouterr().out


def with_section(project: Project, section: str, **values: Any) -> Project:
    project.params[section] = {**project.params.get(section, {}), **values}
    return project


# --- cron: the issue's case and the brief's list -------------------------------------------------------

INVALID_CRONS = [
    "61 25 * * *",  # the issue's
    "* * * *",
    "*/0 * * * *",
    "0 3 * * 8",
    "a b c d e",
    "",
    "0 3 * * * *",  # six fields: croniter reads seconds, classic cron does not
    "0 0 31 2 *",  # Prefect accepts it and never schedules a run
    "0 3 1-0 * *",
    "5/15 * * * *",
    "0 3 * * 1,",
    "H 3 * * *",
    "R 3 * * *",
    "0 3 L,15 * *",
    "0 3 * * 5#3",
    "@daily",
]
VALID_CRONS = [
    "0 3 * * *",
    "*/15 8-18/2 * * mon-fri",
    "0 0 29 2 *",
    "30 1 L * *",
    "0 3 ? * SUN",
    "0 0 1 jan,jul *",
]


@pytest.mark.parametrize("section", ["schedule", "monitor"])
@pytest.mark.parametrize("cron", INVALID_CRONS)
def test_fuseline_check_refuses_a_bad_cron_naming_its_key(
    project: Project, capsys: pytest.CaptureFixture[str], section: str, cron: str
) -> None:
    line = check(with_section(project, section, cron=cron), capsys)
    assert f"{section}.cron: " in line


def test_the_issues_cron_names_the_field_and_value(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    line = check(with_section(project, "schedule", cron="61 25 * * *"), capsys)
    assert "schedule.cron: minute field '61': 61 is outside 0-59" in line


@pytest.mark.parametrize("cron", VALID_CRONS)
def test_a_cron_that_passes_check_builds_the_served_deployment(
    project: Project, capsys: pytest.CaptureFixture[str], cron: str
) -> None:
    from flows.deploy import deployment

    passes_check(with_section(project, "schedule", cron=cron), capsys)
    (schedule,) = deployment("params.yaml").schedules
    assert schedule.schedule.cron == cron


def test_serve_refuses_a_bad_cron_before_it_starts_anything(
    project: Project, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's crash: `fuseline serve` built the deployment and Prefect's cron parser raised."""
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # the old code would start a server
    with_section(project, "schedule", cron="61 25 * * *").write()
    line = refused(["serve", "--params", "params.yaml"], capsys)
    assert "schedule.cron: minute field '61'" in line


# --- cron: generated -----------------------------------------------------------------------------------

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
FIELDS = ((0, 59, ()), (0, 23, ()), (1, 31, ()), (1, 12, MONTHS), (0, 7, DAYS))  # low, high, names
# Tokens a hand-written cron may hold by mistake: other crons' syntax, edge values, other digits.
STRAYS = [
    *"*/-,L#?HRW", "0", "7", "8", "13", "24", "29", "30", "31", "32", "60", "61", "99", "007", "-1",
    "jan", "feb", "sun", "Sat", "x", "\u00b2", "\u0661", "@daily",
]  # fmt: skip
GENERATED = settings(max_examples=200, deadline=None, derandomize=True, database=None)


@st.composite
def grammar_item(draw: st.DrawFn, field: int) -> str:
    low, high, names = FIELDS[field]
    value = st.integers(low, high).map(str)
    if names:
        value = value | st.sampled_from(names) | st.sampled_from(names).map(str.upper)
    kind = draw(st.sampled_from(["value", "range", "star-step", "range-step"]))
    if kind == "value":
        return draw(value)
    first, last = sorted(draw(st.lists(st.integers(low, high), min_size=2, max_size=2)))
    step = draw(st.integers(1, high))
    return {"range": f"{first}-{last}", "star-step": f"*/{step}", "range-step": f"{first}-{last}/{step}"}[
        kind
    ]


@st.composite
def grammar_cron(draw: st.DrawFn) -> str:
    """Five fields of classic cron: `*`, values, names, ranges, steps, lists; `?` and a lone `L` for days."""
    fields = []
    for index in range(5):
        special = ["*"] + (["?"] if index in (2, 4) else []) + (["L"] if index == 2 else [])
        if draw(st.booleans()):
            fields.append(draw(st.sampled_from(special)))
        else:
            fields.append(",".join(draw(st.lists(grammar_item(index), min_size=1, max_size=3))))
    return " ".join(fields)


@st.composite
def mutated_cron(draw: st.DrawFn) -> str:
    """A grammar cron with one field replaced by stray tokens, or a field added or dropped."""
    fields = draw(grammar_cron()).split(" ")
    stray = "".join(draw(st.lists(st.sampled_from(STRAYS), min_size=1, max_size=4)))
    how = draw(st.sampled_from(["replace", "replace", "append", "drop"]))
    if how == "replace":
        fields[draw(st.integers(0, 4))] = stray
    elif how == "append":
        fields.append(stray)
    else:
        fields.pop(draw(st.integers(0, 4)))
    return " ".join(fields)


def loads(cron: str) -> bool:
    """Whether both cron keys of params.yaml accept `cron`."""
    try:
        ScheduleConfig(cron=cron)
        MonitorConfig(cron=cron)
    except ValueError:
        return False
    return True


def prefect_schedules(cron: str) -> bool:
    """Whether Prefect accepts `cron` for a deployment and its parser (croniter) finds a next run."""
    from prefect._vendor.croniter import croniter
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)  # the time zone is checked on its own (below): its check walks tzdata
        croniter(cron, datetime.datetime(2025, 1, 1)).get_next(datetime.datetime)
    except Exception:  # noqa: BLE001 - any refusal of Prefect's counts as "does not schedule"
        return False
    return True


@GENERATED
@given(grammar_cron())
@example("0 0 31 2 *")  # never runs: rare in the draws, so always tried
@example("0 12 30,31 feb ?")
@example("15 3 31 4,jun,9,nov 1")
def test_a_cron_in_the_documented_grammar_loads_exactly_when_prefect_schedules_it(cron: str) -> None:
    assert loads(cron) == prefect_schedules(cron), cron


@GENERATED
@given(mutated_cron())
def test_whatever_cron_loads_prefect_accepts_and_schedules(cron: str) -> None:
    if loads(cron):
        assert prefect_schedules(cron), cron


# --- time zones ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "zone", ["posixrules", "right/UTC", "posix/Europe/Berlin", "Europe/berlin", "../etc"]
)
def test_a_time_zone_prefect_refuses_is_refused_at_load(zone: str) -> None:
    """ZoneInfo opens the first three, so the old check passed them and `fuseline serve` failed."""
    from prefect.client.schemas.schedules import CronSchedule

    with pytest.raises(ValueError, match="Invalid timezone"):
        CronSchedule(cron="0 3 * * *", timezone=zone)
    with pytest.raises(ConfigError, match=re.escape(f"monitor.timezone: unknown time zone {zone!r}")):
        params_from_dict(_params(monitor={"timezone": zone}))


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Etc/GMT+5"])
def test_a_time_zone_prefect_accepts_loads(zone: str) -> None:
    assert params_from_dict(_params(schedule={"timezone": zone})).schedule.timezone == zone


# --- the device ----------------------------------------------------------------------------------------


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda(), reason="this machine has CUDA: 'cuda' is honoured")
def test_cuda_without_a_cuda_device_fails_check_naming_train_device(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    line = check(with_section(project, "train", device="cuda"), capsys)
    assert "train.device: 'cuda' but no CUDA device is visible here" in line


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_cuda_with_a_cuda_device_passes_check(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    passes_check(with_section(project, "train", device="cuda"), capsys)


@pytest.mark.parametrize("device", ["gpu", "cuda:0", "CPU", ""])
def test_an_unknown_device_fails_at_load_naming_train_device(device: str) -> None:
    with pytest.raises(ConfigError, match="train.device: "):
        params_from_dict(_params(train={"device": device}))


# --- paths that must be directories, a registry outside models/ ----------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "path"),
    [
        ("data", "image_root", "images.zip"),
        ("cache", "dir", "cache-file"),
        ("schedule", "registry", "registry"),
        ("monitor", "output", "reports/monitor"),
    ],
)
def test_a_directory_setting_that_names_a_file_fails_check(
    project: Project, capsys: pytest.CaptureFixture[str], section: str, key: str, path: str
) -> None:
    (project.root / path).parent.mkdir(parents=True, exist_ok=True)
    (project.root / path).write_text("a file where a directory belongs\n")
    line = check(with_section(project, section, **{key: path}), capsys)
    assert f"{section}.{key}: {path} is a file, not a directory" in line


def test_a_directory_setting_below_a_file_fails_check(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    (project.root / "blob").write_text("x")
    line = check(with_section(project, "cache", dir="blob/features"), capsys)
    assert "cache.dir: " in line and "a part of it that should be a directory is a file" in line


@pytest.mark.parametrize("registry", ["models", "models/registry", "./models/../models/r", "models/"])
def test_a_registry_inside_models_fails_at_load(registry: str) -> None:
    with pytest.raises(ConfigError, match="schedule.registry: .* lies inside models/"):
        params_from_dict(_params(schedule={"registry": registry}))


def test_a_registry_linked_into_models_fails_check(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    (project.root / "models" / "kept").mkdir(parents=True)
    (project.root / "registry").symlink_to(project.root / "models" / "kept")
    line = check(with_section(project, "schedule", registry="registry"), capsys)
    assert "schedule.registry: registry lies inside models (through a link)" in line


def test_the_default_settings_pass_check(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    (project.root / "registry").mkdir()
    passes_check(project, capsys)


# --- the cluster address -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("runner", "address"),
    [
        ("dask", "tcp://scheduler"),  # no port
        ("dask", "scheduler:99999"),
        ("dask", "scheduler:port"),
        ("dask", "ray://head:10001"),
        ("dask", "tcp://scheduler:8786/path"),
        ("dask", "tcp://sched uler:8786"),
        ("dask", ""),
        ("ray", "tcp://head:10001"),
        ("ray", "head"),
    ],
)
def test_a_malformed_cluster_address_fails_at_load(runner: str, address: str) -> None:
    with pytest.raises(ConfigError, match="runtime.address: "):
        params_from_dict(_params(runtime={"task_runner": runner, "address": address}))


@pytest.mark.parametrize(
    ("runner", "address"),
    [
        ("dask", "tcp://127.0.0.1:8786"),
        ("dask", "scheduler:8786"),
        ("ray", "ray://head:10001"),
        ("ray", "auto"),
    ],
)
def test_a_well_formed_cluster_address_loads(runner: str, address: str) -> None:
    assert (
        params_from_dict(_params(runtime={"task_runner": runner, "address": address})).runtime.address
        == address
    )


@pytest.fixture()
def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (just released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def listening_port() -> Iterator[int]:
    """A port on 127.0.0.1 held by a plain TCP listener (not a Prefect server, not a cluster)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_a_cluster_address_where_nothing_answers_fails_check(
    project: Project, capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    address = f"tcp://127.0.0.1:{closed_port}"
    started = time.perf_counter()
    line = check(with_section(project, "runtime", task_runner="dask", address=address), capsys)
    assert f"runtime.address: nothing answers at {address}" in line
    assert time.perf_counter() - started < 30


def test_a_cluster_address_that_answers_passes_check(
    project: Project, capsys: pytest.CaptureFixture[str], listening_port: int
) -> None:
    passes_check(
        with_section(project, "runtime", task_runner="dask", address=f"127.0.0.1:{listening_port}"), capsys
    )


def test_a_cluster_that_never_answers_costs_the_timeout_not_a_hang() -> None:
    """A listener whose backlog is full drops new connections unanswered, as a black-holed host does."""
    from tasks.preflight import check_cluster

    with socket.socket() as server, socket.socket() as first:
        server.bind(("127.0.0.1", 0))
        server.listen(0)  # one pending connection fills it
        first.connect(server.getsockname())
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        runtime = params_from_dict(_params(runtime={"task_runner": "dask", "address": address})).runtime
        started = time.perf_counter()
        with pytest.raises(
            ConfigError, match=f"runtime.address: nothing answers at {address} .no answer within 0.5 s"
        ):
            check_cluster(runtime, timeout=0.5)
        assert time.perf_counter() - started < 3


# --- the local Prefect server's port -------------------------------------------------------------------


def test_server_start_on_a_port_another_program_holds_is_one_line(
    project: Project, capsys: pytest.CaptureFixture[str], listening_port: int
) -> None:
    line = refused(["server", "start", "--port", str(listening_port)], capsys)
    assert (
        f"port {listening_port} on 127.0.0.1 is taken by a program that does not answer as a Prefect" in line
    )
    assert not (project.root / ".prefect" / "server.pid").exists()  # nothing was started


@pytest.mark.parametrize("port", ["0", "70000", "-1", "http", "4200.5"])
def test_a_port_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str], port: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["ui", "--port", port])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "is not a port (a number from 1 to 65535)" in err and "Traceback" not in err


def test_a_bad_port_in_the_environment_is_one_line_naming_it(
    project: Project, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FUSELINE_PREFECT_PORT", "42OO")
    line = refused(["server", "status"], capsys)
    assert "FUSELINE_PREFECT_PORT: '42OO' is not a port" in line


def _params(**sections: dict[str, Any]) -> dict[str, Any]:
    """The bad-inputs project's params with sections merged in (no files needed: load-time checks)."""
    params = copy.deepcopy(PARAMS)
    for section, values in sections.items():
        params[section] = {**params.get(section, {}), **values}
    return params


def test_the_loaded_message_is_one_line_even_for_several_problems() -> None:
    raw = _params(schedule={"cron": "61 * * * *", "timezone": "Mars/Olympus"}, train={"device": "gpu"})
    with pytest.raises(ConfigError) as info:
        params_from_dict(raw, source="params.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("params.yaml: invalid configuration: ")
    assert all(key in message for key in ("schedule.cron", "schedule.timezone", "train.device")), message


def test_a_yaml_syntax_error_is_one_line(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    """PyYAML's message spans several lines (the mark, a caret); the command prints it as one."""
    (project.root / "params.yaml").write_text("data:\n  id: [item_id\n  target: label\n")
    line = refused(["check", "--params", "params.yaml"], capsys)
    assert "params.yaml: not valid YAML: " in line and "line 2" in line
