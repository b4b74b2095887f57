"""The embedded modalities (text, image, ...): each is one plug-in, here or in another package.

A plug-in defines an `EmbeddedModality` subclass and registers an instance with `register`.
Everything outside the plug-ins loops over `embedded()` or asks for a capability
(`raw_text_columns`) instead of naming a modality: config builds each modality's params
from what its plug-in declares, align asks each to inspect its cells, extract to plan and
encode its contents, prediction to prepare new rows, the report for its coverage line.

Built-in plug-ins are the modules of this package. A separately installed package adds one
through an entry point in the group `fuseline.modalities`, naming a module that registers
its modality on import or an `EmbeddedModality` subclass to register, e.g. in its
pyproject.toml:

    [project.entry-points."fuseline.modalities"]
    toyseq = "toyseq_modality:ToySeqModality"

Its keys then appear in params.yaml like the built-in ones (`data.columns.toyseq`,
`encoders.toyseq`, ...); `dvc repro` also needs its line in dvc.yaml's extract loop. A
plug-in builds on tasks.modalities, tasks.strict (its config's base) and modelzoo, never on
tasks.config, which is built from the plug-ins.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from importlib import metadata
from types import ModuleType

from pydantic import BaseModel

from tasks.errors import ConfigError
from tasks.modalities.base import EmbeddedModality

TABULAR = "tabular"
ENTRY_POINTS = "fuseline.modalities"
# Roles and keys a modality name would collide with (data.columns.<role>, the tabular stage).
_RESERVED = frozenset({TABULAR, "categorical", "numeric"})
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_REGISTERED: dict[str, EmbeddedModality] = {}
_BROKEN: list[str] = []  # one line per entry point that could not be loaded
_DISCOVERED = False


def register(modality: EmbeddedModality) -> EmbeddedModality:
    """Add a plug-in; refused (ValueError) when its name or declarations cannot become params keys."""
    problem = _declaration_problem(modality)
    if problem is not None:
        raise ValueError(f"modality {getattr(modality, 'name', '?')!r}: {problem}")
    if modality.name in _REGISTERED:
        raise ValueError(f"modality {modality.name!r} is registered twice")
    _REGISTERED[modality.name] = modality
    return modality


def embedded() -> list[EmbeddedModality]:
    """Every registered embedded modality, in a fixed order (feature files, reports, CLI).

    A plug-in package whose entry point does not load is a ConfigError naming it, here and at
    every params load, rather than a modality that silently is not there.
    """
    declared = loaded()
    if _BROKEN:
        raise ConfigError(_BROKEN[0])
    return declared


def loaded() -> list[EmbeddedModality]:
    """The plug-ins that loaded, without raising for a broken one (tasks/config.py builds its
    models from these at import, and reports a broken one when params are loaded)."""
    _discover()
    return sorted(_REGISTERED.values(), key=lambda m: (m.order, m.name))


def plugin_problem() -> str | None:
    """The one-line error of the first entry point that did not load, or None."""
    _discover()
    return _BROKEN[0] if _BROKEN else None


def modality(name: str) -> EmbeddedModality:
    embedded()
    try:
        return _REGISTERED[name]
    except KeyError:
        raise KeyError(f"no modality named {name!r}; registered: {', '.join(sorted(_REGISTERED))}") from None


def modality_names() -> tuple[str, ...]:
    """tabular first, then the embedded ones: the stages of extract and the feature files.

    The plug-ins that loaded: command lines offer these before any params are read, and
    reading them reports a broken one.
    """
    return (TABULAR, *(m.name for m in loaded()))


def raw_text_columns(columns: BaseModel) -> list[str]:
    """The columns (of `data.columns`) whose cells word-level models read as they are: TF-IDF,
    wide n-grams, the linear baseline."""
    return [column for m in embedded() if m.raw_text for column in getattr(columns, m.name)]


def raw_text_role() -> str:
    """The first raw-text modality's name: the wide n-gram block is `<role>.__wide__`, and a
    column of strings whose role nothing declares is taken to be one."""
    return next(m.name for m in loaded() if m.raw_text)


def fine_tunable() -> list[EmbeddedModality]:
    """The modalities whose plug-in declares how to split its encoder for fine-tuning."""
    return [m for m in embedded() if m.fine_tuning is not None]


def _declaration_problem(modality: EmbeddedModality) -> str | None:
    name = getattr(modality, "name", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return "its name must be lower-case letters, digits and underscores, starting with a letter"
    if name in _RESERVED:
        return f"{name!r} is a built-in role"
    config = getattr(modality, "encoder_config", None)
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        return "encoder_config must be a pydantic model (its `encoders.<name>` section)"
    if not {"model", "batch_size"} <= set(config.model_fields):
        return "encoder_config must have the keys `model` and `batch_size`"
    try:  # params.yaml may leave the whole section out
        config()
    except ValueError as err:  # pydantic's ValidationError is one
        return f"encoder_config needs a valid default for every key ({err})".replace("\n", " ")
    inherits_size_of = type(modality).size_of is EmbeddedModality.size_of
    if inherits_size_of and getattr(modality, "size_key", None) not in config.model_fields:
        return "size_key must name the encoder_config key that sizes an input (or define size_of)"
    return None


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "files"):
            importlib.import_module(f"{__name__}.{info.name}")
    for entry in sorted(metadata.entry_points(group=ENTRY_POINTS), key=lambda e: e.name):
        problem = _load_entry_point(entry)
        if problem is not None:
            _BROKEN.append(
                f"modality plug-in {entry.name!r} (entry point {entry.value!r} in {ENTRY_POINTS}) "
                f"cannot be used: {problem}"
            )


def _load_entry_point(entry: metadata.EntryPoint) -> str | None:
    """Import what the entry point names and register it; why not, in a few words, or None."""
    try:
        target = entry.load()
    except Exception as err:  # noqa: BLE001 - any failure of someone else's import is reported
        return f"{type(err).__name__}: {err}".replace("\n", " ")
    if isinstance(target, ModuleType):
        return None  # the module registered its modality on import (or raised above)
    if not (isinstance(target, type) and issubclass(target, EmbeddedModality)):
        return "it names neither a module nor an EmbeddedModality subclass"
    if isinstance(_REGISTERED.get(getattr(target, "name", "")), target):
        return None  # its module registered it already
    try:
        register(target())
    except Exception as err:  # noqa: BLE001 - an abstract class, a bad declaration, a clash
        return f"{type(err).__name__}: {err}".replace("\n", " ")
    return None


__all__ = [
    "ENTRY_POINTS",
    "TABULAR",
    "EmbeddedModality",
    "embedded",
    "fine_tunable",
    "loaded",
    "modality",
    "modality_names",
    "plugin_problem",
    "raw_text_columns",
    "raw_text_role",
    "register",
]
