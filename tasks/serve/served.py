"""A loaded model version, predicting a table in memory by `fuseline predict`'s own steps.

`fuseline predict` reads a file (read_new_rows), makes its file cells absolute
(absolute_file_cells) and hands each chunk to `Predictor.predict`. The Python API
(`fuseline.load_model`) and the API server (flows/api.py) have the rows in memory already:
`ServedModel.predict` runs the same three functions on them, so all three give the same
numbers for the same rows. `ModelSlot` is the server's reference to the registry's current
version, swapped when a new version is promoted.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tasks.config import CacheConfig, DataConfig, load_params
from tasks.device import pick_device
from tasks.errors import FuselineError
from tasks.features.cache import FeatureCache
from tasks.serve.predict import (
    Predictor,
    Roots,
    absolute_file_cells,
    file_roots,
    load_predictor,
    new_rows,
)
from tasks.serve.promotion import CURRENT, METRICS, current_entry, resolve_model_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """One bundle with where its rows' files are, its cache, and what the server reports about it."""

    predictor: Predictor
    version: str | None  # the registry version, None for a bundle directory
    roots: Roots  # modality -> the directory file cells are relative to
    cache: FeatureCache
    device: torch.device
    metrics: dict[str, Any] | None  # the version's test metrics (registry only)

    @property
    def data(self) -> DataConfig:
        return self.predictor.data

    def predict(self, frame: pd.DataFrame, source: str = "rows", roots: Roots | None = None) -> pd.DataFrame:
        """<data.id>, prob_<class>..., prediction for each row of `frame`, as `fuseline predict` writes.

        `frame` holds the id column and every column the model was trained on, raw as in a
        source file; file cells are paths under `roots` (default: the model's roots).
        """
        roots = self.roots if roots is None else roots
        rows = absolute_file_cells(new_rows(frame, self.data, roots, source), self.data, roots)
        return self.predictor.predict(rows, roots, self.cache, self.device)


def load_served(
    model: str | Path, cache: FeatureCache, root_overrides: dict[str, str] | None = None
) -> ServedModel:
    """A bundle directory, or a registry's current version, checked and loaded as `fuseline predict` does."""
    bundle_dir = resolve_model_dir(Path(model)).resolve()
    version = registry_version(Path(model))
    predictor = load_predictor(bundle_dir, cache)
    metrics = version_metrics(Path(model), version) if version is not None else None
    roots = file_roots(predictor.data, root_overrides)
    return ServedModel(predictor, version, roots, cache, pick_device("auto"), metrics)


def with_encoders_loaded(model: ServedModel) -> ServedModel:
    """The model with its encoders in memory (loaded once per process), so that a server's first
    new row does not wait seconds for them; a version promoted later shares those it has in common."""
    for spec in model.predictor.specs.values():
        spec.load()
    return model


def registry_version(model: Path) -> str | None:
    """The version current.json names, or None when `model` is a bundle (no pointer)."""
    entry = current_entry(model)
    if entry is None:
        return None
    version = entry.get("version")
    return version if isinstance(version, str) else None


def version_metrics(registry: Path, version: str) -> dict[str, Any] | None:
    """The version's test metrics (its evaluation.json `test`), or None when they cannot be read."""
    try:
        evaluation = json.loads((registry / version / METRICS).read_text())
    except (OSError, ValueError):
        return None
    test = evaluation.get("test") if isinstance(evaluation, dict) else None
    return test if isinstance(test, dict) else None


def machine_cache_dir(params_path: str | Path | None) -> Path:
    """`cache.dir` of the project's params.yaml (its default outside a project), resolved."""
    if params_path and Path(params_path).is_file():
        return Path(load_params(params_path).cache.dir).resolve()
    return Path(CacheConfig().dir).resolve()


class ModelSlot:
    """The model a server predicts with, following the registry's pointer.

    `current()` costs one stat of current.json. When the pointer file changes and names
    another version, that version is loaded and the reference swapped; a caller holding the
    old ServedModel finishes with it. A version that fails to load is logged and the old
    one kept until the pointer moves again.
    """

    def __init__(self, source: Path, load: Callable[[], ServedModel]) -> None:
        self.source = Path(source)
        self._load = load
        self._lock = threading.Lock()
        self._stamp = _pointer_stamp(self.source)
        self._model = load()

    def loaded(self) -> ServedModel:
        """The version in memory now, without looking at the pointer (never loads)."""
        return self._model

    def current(self) -> ServedModel:
        stamp = _pointer_stamp(self.source)
        if stamp == self._stamp:
            return self._model
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp  # first: a version that fails to load is not retried per request
                self._swap()
        return self._model

    def _swap(self) -> None:
        try:
            if registry_version(self.source) != self._model.version:
                model = self._load()
                log.info("serving %s (was %s)", model.version, self._model.version)
                self._model = model
        except FuselineError as err:
            log.error("kept serving %s: the promoted version cannot be loaded (%s)", self._model.version, err)


def _pointer_stamp(source: Path) -> tuple[int, int, int] | None:
    """Identity of the registry's current.json (rewritten atomically: a new inode each time)."""
    try:
        found = os.stat(source / CURRENT)
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size
