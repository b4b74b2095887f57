"""Import every module of a package so that its @register decorators run."""

from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package_name: str, package_path: list[str]) -> None:
    """Import all non-private modules beside a package's __init__.

    Auto-discovery is what lets a new encoder or head be added as one file.
    """
    for module in pkgutil.iter_modules(package_path):
        if not module.name.startswith("_") and module.name not in ("base", "blocks"):
            importlib.import_module(f"{package_name}.{module.name}")
