"""The project's module-level import graph, read from the source with `ast` (nothing is imported).

Module level means every statement outside a function body: `if TYPE_CHECKING:` blocks,
`try` blocks, class bodies and `if __name__ == "__main__":` blocks included. An import inside
a function runs only when the function does, so it is not an edge; one under TYPE_CHECKING
never runs, but a type checker follows it, so a circle through it is still a circle (pass
`type_checking=False` for the imports that run).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("fuseline", "flows", "tasks", "modelzoo")
Graph = dict[str, dict[str, int]]  # module -> {imported project module: line of the first import}


def module_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every module of the packages under `root`, by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imported_names(path: Path, module: str, type_checking: bool = True) -> dict[str, int]:
    """Dotted names the module imports at module level (for `from a import b`: `a` and `a.b`)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.setdefault(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                found.setdefault(base, node.lineno)
                for alias in node.names:
                    found.setdefault(f"{base}.{alias.name}", node.lineno)
            elif isinstance(node, ast.If) and _is_type_checking(node) and not type_checking:
                visit(node.orelse)
            else:
                for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                    visit(getattr(node, field, None) or [])

    visit(ast.parse(path.read_text()).body)
    return found


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES, type_checking: bool = True) -> Graph:
    """Module -> the project modules it imports at module level (`from a import b`: `a`, and
    `a.b` when that is a module)."""
    files = module_files(root, packages)
    return {
        module: {
            name: line
            for name, line in imported_names(path, module, type_checking).items()
            if name in files and name != module
        }
        for module, path in files.items()
    }


def circles(graph: Graph) -> list[list[str]]:
    """The groups of modules that import each other, directly or around a loop (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def describe(group: list[str], graph: Graph) -> str:
    """One line per import inside the circle: `importer:line -> imported`."""
    return "\n".join(
        f"  {module}:{line} -> {imported}"
        for module in group
        for imported, line in sorted(graph[module].items())
        if imported in group
    )
