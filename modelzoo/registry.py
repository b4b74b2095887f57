"""Name -> component registry for encoders and fusion heads.

One registry for every kind of component, so that params.yaml can name any of them and a
new one is added by decorating a class in its own module; nothing else has to change.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

if TYPE_CHECKING:
    from torch import nn

T = TypeVar("T")

HEAD = "head"
ENCODER_SUFFIX = "_encoder"  # "<modality>_encoder": a new modality's encoders need no edit here
_REGISTRY: dict[str, dict[str, object]] = {HEAD: {}}


def register(kind: str, name: str) -> Callable[[T], T]:
    """Decorator that records a component under `kind`/`name` (`head`, or `<modality>_encoder`)."""
    if kind != HEAD and not (kind.endswith(ENCODER_SUFFIX) and len(kind) > len(ENCODER_SUFFIX)):
        raise ValueError(
            f"unknown component kind {kind!r}; kinds are {HEAD!r} and '<modality>{ENCODER_SUFFIX}'"
        )
    _REGISTRY.setdefault(kind, {})

    def decorate(component: T) -> T:
        if name in _REGISTRY[kind]:
            raise ValueError(f"{kind} {name!r} is registered twice")
        _REGISTRY[kind][name] = component
        return component

    return decorate


def lookup(kind: str, name: str) -> object:
    """The component registered as `kind`/`name`; KeyError lists the names that exist."""
    _load_builtin_components(kind)
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY.get(kind, {}))) or "none"
        raise KeyError(f"no {kind} named {name!r}; registered: {known}") from None


def names(kind: str) -> list[str]:
    """Registered names of one kind, sorted so that listings and tests are stable."""
    _load_builtin_components(kind)
    return sorted(_REGISTRY.get(kind, {}))


def build_head(name: str, in_dims: dict[str, int], out_dim: int, options: object) -> nn.Module:
    """The one way a fusion head is made: by its registered name, with its validated options.

    Training builds a fresh head and loading a bundle rebuilds one (also on the meta device,
    to check shapes before allocating); both come through here, so they cannot drift apart.
    """
    head_cls = cast("Callable[..., nn.Module]", lookup("head", name))
    return head_cls(dict(in_dims), out_dim, options)


def _load_builtin_components(kind: str) -> None:
    # Importing a package runs its modules' @register decorators. Done lazily and per kind:
    # validating params needs the heads, not the (heavy) encoder libraries.
    importlib.import_module("modelzoo.heads" if kind == "head" else "modelzoo.encoders")
