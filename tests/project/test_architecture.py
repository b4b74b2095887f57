"""The architecture stays as drawn: import layers (import-linter) and no import circle.

pyproject.toml's [tool.importlinter] states the layers, flows > tasks' stages > modalities >
scores | modelzoo; `lint-imports` checks every import against them, inside functions and under
TYPE_CHECKING too, directly or through a chain of modules. The circle check reads module-level
imports (tests/project/import_graph.py): one inside a function may point back, for a slow
import or a rarely used path, but no module may import itself round a loop at module level,
type-checking imports included.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.project.import_graph import PACKAGES, circles, describe, import_graph

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` (the CLI a developer runs) on the tree under `root`, with its pyproject.toml."""
    assert LINT_IMPORTS.is_file(), f"{LINT_IMPORTS} is missing: pip install -e '.[dev]' installs it"
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_hold() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_contracts_see_an_import_that_points_up(tmp_path: Path) -> None:
    """The check itself can fail: in a copy of the tree, data importing train breaks the layers."""
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    labels = tmp_path / "tasks" / "data" / "labels.py"
    labels.write_text(labels.read_text() + "\nfrom tasks.train import plan  # noqa: E402, F401\n")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1 and "tasks.data is not allowed to import tasks.train" in result.stdout


def test_no_module_level_import_circle() -> None:
    graph = import_graph(REPO)
    found = circles(graph)
    assert not found, "import circles:\n" + "\n\n".join(describe(group, graph) for group in found)


TYPE_CHECKED = "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.a import A\n"
IN_A_FUNCTION = "def late():\n    from pkg.a import A\n\n    return A\n"
BELOW_MAIN = 'if __name__ == "__main__":\n    from pkg.a import A\n'


@pytest.mark.parametrize(
    "b_source,circle",
    [(TYPE_CHECKED, [["pkg.a", "pkg.b"]]), (BELOW_MAIN, [["pkg.a", "pkg.b"]]), (IN_A_FUNCTION, [])],
    ids=["type-checking import", "__main__ block", "import in a function"],
)
def test_the_circle_check_counts_module_level_imports(tmp_path: Path, b_source: str, circle: list) -> None:
    """a imports b; b imports a back under TYPE_CHECKING or __main__ (a circle), or in a function (none)."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package."""\n')
    (package / "a.py").write_text("from pkg import b\n\n\nclass A:\n    pass\n")
    (package / "b.py").write_text(b_source)
    assert circles(import_graph(tmp_path, ("pkg",))) == circle
