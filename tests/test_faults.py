"""Faults: stages killed with SIGKILL, output directories that cannot be written, disks that fill.

Every test runs a real stage (`python -m flows.<stage>`, reporting to the session's Prefect
server) in a copy of one small project that the real pipeline flow has already run once,
so each output has an "old" version. The invariant: whatever happens, every output is the
old complete version or the new complete version (the one a clean rerun produces: the
pipeline is deterministic on CPU), and after a rerun nothing half-written is left anywhere.

Kills at exact points use a wrapper that runs the same module as `python -m` does, after
hooking one function of tasks/atomic.py to SIGKILL its own process before or after a given
file or directory is renamed into place.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_params

pytestmark = pytest.mark.slow

# Outputs written as one unit (a directory swapped in whole) and as single files.
DIR_OUTPUTS = ("data/raw", "data/aligned", "models", "reports/plots", "reports/figures")
FILE_GLOBS = (
    "data/features/*.parquet",
    "reports/*.json",
    "reports/*.parquet",
    "reports/*.md",
    "reports/train/*",
)
TEMP_NAME = re.compile(r"^\..+\.(tmp|old)$")

KILLER = """
import os, runpy, signal, sys
from pathlib import Path
import tasks.atomic as atomic

target, function, name, when, module = sys.argv[1:6]
owner = os if function == "replace" else atomic
original = getattr(owner, function)  # fails loudly if tasks/atomic.py renamed it

def hooked(*args):
    path = args[1] if function == "replace" else args[-1]
    hit = Path(path).name == name
    if hit and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = original(*args)
    if hit and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result

setattr(owner, function, hooked)
sys.argv = [module]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


# --- the project ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-row demo project after one full pipeline run: every output has an old version."""
    from flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("faults") / "project"
    root.mkdir()
    params = tiny_params(
        rows=60,
        encoders={
            "text": {"model": "minilm", "max_length": 32, "batch_size": 64},
            "image": {"model": "efficientnet_lite0", "image_size": 32, "batch_size": 64},
        },
        fusion={"hidden": 16},
        train={"epochs": 3, "seed": 1},
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        pipeline(params_path="params.yaml")
    return root


@pytest.fixture
def project(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(finished, copy, symlinks=True)
    return copy


def env(prefect_api: str) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PREFECT_API_URL=prefect_api, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def kill_at(
    project: Path, prefect_api: str, module: str, function: str, name: str, when: str
) -> subprocess.CompletedProcess[str]:
    """Run `python -m module` in `project`, SIGKILLed at `function` on `name` (`when` before/after)."""
    args = [sys.executable, "-c", KILLER, "-", function, name, when, module]
    result = subprocess.run(
        args, cwd=project, env=env(prefect_api), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == -signal.SIGKILL, (
        f"not killed at {function}({name}) {when} (rc {result.returncode}):\n{result.stderr[-3000:]}"
    )
    return result


def rerun(project: Path, stage: Callable[..., object]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        stage(params_path="params.yaml")


def rerun_process(project: Path, prefect_api: str, module: str) -> None:
    """The rerun as `dvc repro` makes it after a kill: `python -m module` in a fresh process.

    A rerun inside the test process after the rest of the suite produced a models/ tree that
    differs from a fresh process's (it does not when run alone, nor after tests/tasks or
    tests/modelzoo: some earlier in-process test leaves state behind; not yet found)."""
    result = subprocess.run(
        [sys.executable, "-m", module], cwd=project, env=env(prefect_api), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def set_params(project: Path, section: str, **values: object) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# --- snapshots of outputs ----------------------------------------------------------------------------


def outputs(project: Path) -> dict[str, str | None]:
    """Digest of every output unit (a whole directory or one file); None where absent."""
    units: dict[str, str | None] = {}
    for name in DIR_OUTPUTS:
        directory = project / name
        if not directory.is_dir():
            units[name] = None
            continue
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        listing = [(p.relative_to(directory).as_posix(), _sha(p)) for p in files]
        units[name] = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    for pattern in FILE_GLOBS:
        for path in project.glob(pattern):
            if not TEMP_NAME.match(path.name):
                units[path.relative_to(project).as_posix()] = _sha(path)
    return units


def leftovers(project: Path) -> list[str]:
    """Temp files or directories from interrupted writes, anywhere outputs are written."""
    places = [project, project / "data", project / "reports", *(project / d for d in DIR_OUTPUTS)]
    places += [project / "data" / "features", project / "reports" / "train"]
    return sorted(
        str(p.relative_to(project))
        for place in places
        if place.is_dir()
        for p in place.iterdir()
        if TEMP_NAME.match(p.name)
    )


def assert_old_or_new(old: dict, killed: dict, new: dict) -> dict[str, str]:
    """Each unit after the kill is the old or the new version; returns which, per unit."""
    which = {}
    for unit in sorted(old.keys() | killed.keys() | new.keys()):
        got = killed.get(unit)
        assert got in (old.get(unit), new.get(unit)), f"{unit} is neither the old nor the new version"
        which[unit] = "old" if got == old.get(unit) else "new"
    return which


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- kill -9 at exact points ---------------------------------------------------------------------------


def test_ingest_killed_before_its_swap_keeps_the_old_snapshot(project: Path, prefect_api: str) -> None:
    from flows.ingest import ingest

    source = project / "data" / "demo" / "items.csv"
    lines = source.read_text().splitlines()
    lines[1] = lines[1].replace(",", ",edited ", 1)  # the first row's second field changes
    source.write_text("\n".join(lines) + "\n")
    old = outputs(project)
    kill_at(project, prefect_api, "flows.ingest", "_exchange", "raw", "before")
    killed = outputs(project)
    rerun(project, ingest)
    new = outputs(project)
    assert new["data/raw"] != old["data/raw"], "the edit did not change the snapshot: the test proves nothing"
    assert assert_old_or_new(old, killed, new)["data/raw"] == "old"
    assert leftovers(project) == []


def test_train_killed_while_writing_the_bundle_keeps_the_old_models(project: Path, prefect_api: str) -> None:
    from flows.train import train

    set_params(project, "train", seed=2)
    old = outputs(project)
    kill_at(project, prefect_api, "flows.train", "_fsync_file", "model.safetensors", "before")
    killed = outputs(project)
    assert any(TEMP_NAME.match(name) for name in os.listdir(project)), "no half-written models/ to test"
    rerun(project, train)
    new = outputs(project)
    assert new["models"] != old["models"]
    which = assert_old_or_new(old, killed, new)
    assert which["models"] == "old" and which["reports/train/learning_curve.csv"] == "old"
    assert leftovers(project) == []


def test_train_killed_right_after_its_swap_has_the_new_models(project: Path, prefect_api: str) -> None:

    set_params(project, "train", seed=2)
    old = outputs(project)
    kill_at(project, prefect_api, "flows.train", "_exchange", "models", "after")
    killed = outputs(project)
    assert leftovers(project), "the old tree should still sit in a temp directory"
    rerun_process(project, prefect_api, "flows.train")
    new = outputs(project)
    which = assert_old_or_new(old, killed, new)
    assert which["models"] == "new" and which["reports/train/learning_curve.csv"] == "old"
    assert leftovers(project) == []


def test_evaluate_killed_between_two_outputs_leaves_each_whole(project: Path, prefect_api: str) -> None:
    from flows.evaluate import evaluate

    # Another valid bundle in models/ (the text-only baseline as the model), so evaluate's new
    # outputs differ from the old ones without paying for a second training run.
    models = project / "models"
    text_only = project / "text-only"
    shutil.copytree(models / "baselines" / "text", text_only)
    shutil.rmtree(models)
    text_only.rename(models)
    old = outputs(project)
    kill_at(project, prefect_api, "flows.evaluate", "replace", "metrics.json", "after")
    killed = outputs(project)
    rerun(project, evaluate)
    new = outputs(project)
    assert new["reports/metrics.json"] != old["reports/metrics.json"]
    which = assert_old_or_new(old, killed, new)
    assert which["reports/metrics.json"] == "new" and which["reports/test_predictions.parquet"] == "old"
    assert leftovers(project) == []


def test_train_killed_the_moment_it_starts_writing(project: Path, prefect_api: str) -> None:
    """An outside `kill -9` at an unplanned moment: as soon as a temp output appears."""
    from flows.train import train

    set_params(project, "train", seed=3)
    old = outputs(project)
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.train"], cwd=project, env=env(prefect_api),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        if any(TEMP_NAME.match(name) for name in os.listdir(project)):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait(timeout=60)
    print(f"train {'was killed' if process.returncode == -signal.SIGKILL else 'finished'} before the check")
    killed = outputs(project)
    rerun(project, train)
    assert_old_or_new(old, killed, outputs(project))
    assert leftovers(project) == []


# --- sources that cannot be read ---------------------------------------------------------------------


def test_a_missing_source_fails_at_once_naming_it(prefect_api: str, tmp_path: Path) -> None:
    """A permanent read error is not retried (retries are for transient I/O errors)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from flows.ingest import ingest
    from tasks.errors import DataError

    params = tiny_params(rows=60)
    params["data"].update(demo=None, sources=[{"path": "data/absent.csv"}])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        state = ingest(params_path="params.yaml", return_state=True)
    assert state.is_failed()
    with pytest.raises(DataError, match="file data/absent.csv: source file not found"):
        state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,  # the sync client sends None otherwise: a 422
            limit=10,
        )
    assert [(run.name.split("-")[0], run.run_count) for run in runs] == [("snapshot", 1)]


# --- outputs that cannot be written ------------------------------------------------------------------

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER = 1, 2, 3


def _as_ordinary_user() -> None:
    """In the child: root without the capabilities that ignore file permissions.

    Dropping them from the bounding set before exec means the new program never gets them, so
    uid 0 meets the same permission bits as everyone else (on a non-root machine: a no-op).
    """
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_stage(
    project: Path, prefect_api: str, module: str, preexec: Callable[[], None]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module], cwd=project, env=env(prefect_api),
        capture_output=True, text=True, timeout=600, preexec_fn=preexec,
    )  # fmt: skip


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    mode = directory.stat().st_mode
    directory.chmod(0o555)
    try:
        yield
    finally:
        directory.chmod(mode)


def test_permission_denied_on_the_output_directory_is_a_clear_error(project: Path, prefect_api: str) -> None:
    old = outputs(project)
    with read_only(project / "data"):
        result = run_stage(project, prefect_api, "flows.ingest", _as_ordinary_user)
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("fuseline: cannot write data/raw: permission denied"), message
    assert outputs(project) == old
    assert leftovers(project) == []


def test_file_size_limit_while_writing_the_bundle_is_a_clear_error(project: Path, prefect_api: str) -> None:
    """The per-process file size limit fails writes just as a full disk does, without root."""

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))  # Python ignores SIGXFSZ

    set_params(project, "train", seed=2)
    old = outputs(project)
    result = run_stage(project, prefect_api, "flows.train", limited)
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("fuseline: cannot write models: file too large"), message
    assert outputs(project) == old
    assert leftovers(project) == []


@pytest.fixture
def small_disk(project: Path) -> Iterator[Path]:
    """The project on its own tmpfs with 64 KB to spare (root with CAP_SYS_ADMIN only)."""
    mount_point = Path(tempfile.mkdtemp(prefix="fuseline-full-disk-"))
    used = sum(p.stat().st_size for p in project.rglob("*") if p.is_file())
    size = used + 8 * 1024 * 1024 + 64 * 1024  # tmpfs counts whole pages per file: leave slack
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        mount_point.rmdir()
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        copy = mount_point / "project"
        shutil.copytree(project, copy, symlinks=True)
        yield copy
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
        mount_point.rmdir()


def test_disk_full_while_writing_the_bundle_is_a_clear_error(small_disk: Path, prefect_api: str) -> None:
    project = small_disk
    filler = project / "filler.bin"
    # Unbuffered: a buffered writer keeps what did not fit and fails again on close, depending on
    # whether the free space happened to be a multiple of the chunk.
    with open(filler, "wb", buffering=0) as handle:  # take all but a sliver of what is left
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    filler.write_bytes(filler.read_bytes()[: -256 * 1024])  # leave 256 KB: less than the bundle
    set_params(project, "train", seed=2)
    old = outputs(project)
    result = run_stage(project, prefect_api, "flows.train", lambda: None)
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("fuseline: cannot write models: no space left on device"), message
    assert outputs(project) == old
    assert leftovers(project) == []
