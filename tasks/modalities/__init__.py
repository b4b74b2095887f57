"""The embedded modalities (text, image, ...): each is one module in this package.

A module defines an `EmbeddedModality` subclass and registers an instance with `register`.
Everything outside this package loops over `embedded()` instead of naming a modality: align
asks each to inspect its cells, extract to plan and encode its contents, prediction to
prepare new rows, the report for its coverage line. Adding a modality is its module here,
its encoder in modelzoo/encoders, its keys in tasks/config.py and params.yaml, and its line
in dvc.yaml's extract loop.
"""

from __future__ import annotations

import importlib
import pkgutil

from tasks.modalities.base import EmbeddedModality

TABULAR = "tabular"
_REGISTERED: dict[str, EmbeddedModality] = {}


def register(modality: EmbeddedModality) -> EmbeddedModality:
    if modality.name in _REGISTERED:
        raise ValueError(f"modality {modality.name!r} is registered twice")
    _REGISTERED[modality.name] = modality
    return modality


def embedded() -> list[EmbeddedModality]:
    """Every registered embedded modality, in a fixed order (feature files, reports, CLI)."""
    _discover()
    return sorted(_REGISTERED.values(), key=lambda m: (m.order, m.name))


def modality(name: str) -> EmbeddedModality:
    _discover()
    try:
        return _REGISTERED[name]
    except KeyError:
        raise KeyError(f"no modality named {name!r}; registered: {', '.join(sorted(_REGISTERED))}") from None


def modality_names() -> tuple[str, ...]:
    """tabular first, then the embedded ones: the stages of extract and the feature files."""
    return (TABULAR, *(m.name for m in embedded()))


_DISCOVERED = False


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "files"):
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = ["TABULAR", "EmbeddedModality", "embedded", "modality", "modality_names", "register"]
