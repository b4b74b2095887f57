"""dvc.yaml's deps must cover every project module a stage imports, or `dvc repro` misses changes.

For each stage, the modules its `python -m flows.<stage>` command imports at module level are
followed through the project (flows, tasks, modelzoo), as are the packages that import all of
their modules on first use (encoders, heads, modalities). Imports inside functions and under
`if TYPE_CHECKING:` are not followed: they run only on paths that the stage's own code names,
or never. Every file reached must be a dep of the stage, or lie in a folder that is one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.project.import_graph import PACKAGES, imported_names

REPO = Path(__file__).resolve().parents[2]
# Packages whose __init__ imports every module beside it (registries filled by discovery).
DISCOVERING = ("modelzoo.encoders", "modelzoo.heads", "tasks.modalities")


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _top_level_imports(path: Path, module: str) -> set[str]:
    names = imported_names(path, module, type_checking=False)
    return {name for name in names if name.split(".")[0] in PACKAGES}


def imported_files(start: str) -> set[Path]:
    seen: dict[str, Path] = {}
    todo = [start]
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if path is None or module in seen:
            continue
        seen[module] = path
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(_top_level_imports(path, module))
        if module in DISCOVERING:
            todo += [f"{module}.{p.stem}" for p in path.parent.glob("*.py") if p.stem != "__init__"]
    return {path.relative_to(REPO) for path in seen.values()}


def _stages() -> list[tuple[str, dict]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return [(name, stage.get("do", stage)) for name, stage in stages.items()]


def _covered(path: Path, deps: list[str]) -> bool:
    if _docstring_only(REPO / path):  # a package marker runs no code
        return True
    return any(path == Path(dep) or Path(dep) in path.parents for dep in deps)


def _docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


@pytest.mark.parametrize("name,stage", _stages(), ids=[name for name, _ in _stages()])
def test_stage_deps_cover_its_imports(name: str, stage: dict) -> None:
    command = re.search(r"python -m (flows\.\w+)", stage["cmd"])
    assert command, f"stage {name}: expected `python -m flows.<stage>`, got {stage['cmd']!r}"
    deps = [str(dep) for dep in stage.get("deps", [])]
    missing = sorted(str(p) for p in imported_files(command.group(1)) if not _covered(p, deps))
    assert not missing, f"stage {name} imports files its dvc.yaml deps do not cover: {missing}"


def test_the_check_sees_a_missing_dep() -> None:
    """The test itself can fail: drop a dep that extract needs and the check names it."""
    extract = dict(_stages())["extract"]
    deps = [dep for dep in extract["deps"] if dep != "tasks"]
    uncovered = {p for p in imported_files("flows.extract") if not _covered(p, deps)}
    assert (
        Path("tasks/features/cache/store.py") in uncovered and Path("tasks/modalities/image.py") in uncovered
    )


RESOLVED = "data/resolved/params.yaml"


def _tracked_keys(stage: dict) -> list[str]:
    """The stage's params keys; any not read from the resolved file fails the test that calls this."""
    keys: list[str] = []
    for entry in stage.get("params", []):
        assert isinstance(entry, dict) and list(entry) == [RESOLVED], f"params not from {RESOLVED}: {entry}"
        keys += entry[RESOLVED]
    return keys


def test_evaluate_declares_the_params_it_reads() -> None:
    assert "data" in _tracked_keys(dict(_stages())["evaluate"])


@pytest.mark.parametrize("name,stage", _stages(), ids=[name for name, _ in _stages()])
def test_stages_track_the_resolved_params_never_params_yaml_keys(name: str, stage: dict) -> None:
    """A key read from params.yaml itself would be one a user must write out for DVC's sake."""
    _tracked_keys(stage)


def test_dvc_yaml_interpolates_no_params_key() -> None:
    """`${data.image_root}` fails to parse when a user's params.yaml leaves the key to its default."""
    text = (REPO / "dvc.yaml").read_text()
    assert not re.findall(r"\$\{(?!key\}|item\.)[^}]*\}", text)
