"""Encoders fitted on the data (`encoders.text.model: tfidf`): where their state lives and how it travels.

A fitted encoder's state is a directory of JSON and safetensors (modelzoo/encoders/tfidf.py),
made from the train rows only. It lives in three places:

    <cache.dir>/fitted/<modality>-<key>/  the fit, content-addressed by a digest of the train
                                          texts, the settings and the fitting libraries'
                                          versions: a rerun with the same train texts reuses
                                          it, so its fingerprint and cache namespace stay put
    data/features/<modality>.fitted/      extract's DVC out, a copy: it survives a deleted
                                          cache (DVC would not rerun extract for that) and is
                                          what train reads; a modality whose encoder is not
                                          fitted gets a one-line note there instead
    models/fitted/<modality>/             train's copy inside the bundle, named with each
                                          file's SHA-256 in the bundle's encoder record (which
                                          the bundle digest covers); prediction, the monitor
                                          and champion re-scoring load this copy, then check
                                          its fingerprint as for any encoder

Refitting on other train texts changes the vocabulary, idf or components, hence the encoder
fingerprint, hence the row-level cache namespace: stale vectors cannot be reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from modelzoo.encoders.loading import fitted_encoder, fitted_state_owner
from tasks.atomic import atomic_dir, write_json
from tasks.config import Params
from tasks.errors import BundleError, ConfigError, DataError
from tasks.modalities import EmbeddedModality, modality
from tasks.paths import Layout

log = logging.getLogger(__name__)

NOTE = "none.json"  # what data/features/<modality>.fitted holds when the encoder is not fitted
CACHE_DIR = "fitted"  # under cache.dir
BUNDLE_DIR = "fitted"  # under a bundle: models/fitted/<modality>/
MANIFEST = ".sha256.json"  # in the cache copy only: each state file's digest, checked before reuse

# encoder name -> fit plan: from the modality's `encoders.<name>` section, the aligned table
# and its columns, the fit's cache key and a call that fits and returns the state files. The
# registry marks an encoder as fitted; this says how tasks fit it.
FitPlan = Callable[[Any, pd.DataFrame, list[str]], tuple[str, Callable[[], dict[str, bytes]]]]


def _fitters(plugin: EmbeddedModality) -> dict[str, FitPlan]:
    """The fits this modality's cells allow: TF-IDF reads raw text, whichever modality holds it."""
    if not plugin.raw_text:
        return {}
    from tasks.features import tfidf  # scikit-learn is imported only when a fit runs

    return {"tfidf": tfidf.fit_plan}


@dataclass(frozen=True)
class FittedState:
    """A fitted encoder state directory, and whether this run found it in the cache."""

    directory: Path
    key: str
    reused: bool


def needs_fitting(params: Params, modality_name: str) -> bool:
    """Whether params.yaml names, for this modality, an encoder that is fitted on the train rows."""
    settings = modality(modality_name).encoder_settings(params.encoders)
    return fitted_encoder(modality_name, settings.model)


def prepare_state(
    params: Params, modality_name: str, aligned: pd.DataFrame, cache_dir: str | Path
) -> FittedState:
    """The fitted state for the aligned table's train rows: from the cache, else fitted and cached."""
    plugin = modality(modality_name)
    model = plugin.encoder_settings(params.encoders).model
    fitter = _fitters(plugin).get(model)
    if fitter is None:
        raise ConfigError(
            f"encoders.{modality_name}.model: {model!r} is fitted on the data, but nothing here fits it"
        )
    key, fit = fitter(plugin.encoder_section(params.encoders), aligned, plugin.columns(params.data))
    directory = Path(cache_dir) / CACHE_DIR / f"{modality_name}-{key}"
    manifest = _read_manifest(directory)
    if manifest is not None and manifest == state_digests(directory):
        log.info("%s: fitted %s encoder reused from %s", modality_name, model, directory)
        return FittedState(directory, key, reused=True)
    if manifest is not None:
        log.warning("%s: cached %s state %s is damaged; fitting again", modality_name, model, directory)
    files = fit()
    with atomic_dir(directory) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        write_json({name: _sha256(data) for name, data in files.items()}, tmp / MANIFEST)
    log.info("%s: fitted the %s encoder on the train rows into %s", modality_name, model, directory)
    return FittedState(directory, key, reused=False)


def publish_state(state: FittedState | None, out: Path, modality_name: str) -> FittedState | None:
    """Write extract's out `data/features/<modality>.fitted`: a copy of the state, or the note.

    An out already holding the same files is left alone (no 100 MB copy on a warm rerun).
    Returns the state as the out holds it (extraction then loads it from there), or None.
    """
    if state is None:
        note = {"fitted": None, "why": f"the {modality_name} encoder is not fitted on the data"}
        with atomic_dir(out) as tmp:
            write_json(note, tmp / NOTE)
        return None
    wanted = state_digests(state.directory)
    if not (out.is_dir() and state_digests(out) == wanted and not (out / NOTE).exists()):
        with atomic_dir(out) as tmp:
            for name in wanted:
                shutil.copy2(
                    state.directory / name, tmp / name
                )  # mtimes kept: the fingerprint memo stays warm
    return FittedState(out.resolve(), state.key, state.reused)


def state_digests(directory: Path) -> dict[str, str]:
    """SHA-256 of each state file in `directory` (not the manifest, not hidden temps); {} if none."""
    if not directory.is_dir():
        return {}
    return {
        path.name: _sha256(path.read_bytes())
        for path in sorted(directory.iterdir())
        if path.is_file() and not path.name.startswith(".")
    }


def state_directory(kind: str, model: str) -> Path | None:
    """`model` as a fitted state directory (what a fitted EncoderSpec's model is), or None."""
    return Path(model) if fitted_state_owner(kind, model) is not None else None


# --- train: into the bundle ----------------------------------------------------------------------


def checked_states(layout: Layout, metadata: dict[str, dict]) -> dict[str, dict[str, str]]:
    """modality -> file digests of each fitted state train must copy, checked against its feature file.

    The feature file records the digests of the state it was encoded with; an out that no
    longer matches (a partial rerun, an edit) would put features and encoder out of step.
    """
    states: dict[str, dict[str, str]] = {}
    for name, meta in metadata.items():
        recorded = (meta.get("state") or {}).get("files")
        if recorded is None:
            continue
        out = layout.fitted(name)
        if state_digests(out) != recorded:
            raise DataError(
                f"does not hold the {name} encoder state that {layout.feature_file(name)} was made with; "
                "rerun extract (dvc repro)",
                file=str(out),
            )
        states[name] = dict(recorded)
    return states


def copy_states(models: Path, layout: Layout, states: dict[str, dict[str, str]]) -> None:
    """Copy each checked state into `models`/fitted/<modality>/ (models is train's temp tree)."""
    for name, files in states.items():
        target = models / BUNDLE_DIR / name
        target.mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copy2(layout.fitted(name) / file, target / file)


def state_record(name: str, files: dict[str, str], bundle_location: Path) -> dict[str, Any]:
    """The bundle encoder record's `state`: the copy's path relative to that bundle, and its digests.

    `bundle_location` is the bundle's directory relative to models/ (`.` for the fused head,
    `baselines/text` for a baseline), so every bundle under models/ finds the one copy.
    """
    relative = os.path.relpath(Path(BUNDLE_DIR) / name, bundle_location)
    return {"dir": Path(relative).as_posix(), "files": dict(files)}


def bundle_state_dir(bundle_dir: str | Path, kind: str, record: dict[str, Any]) -> Path:
    """The bundle's own copy of its fitted `kind` encoder, after checking each file's SHA-256.

    Raises:
        BundleError: the record names no copy, or the copy is missing or changed since training.
    """
    state = record.get("state")
    if not (
        isinstance(state, dict) and isinstance(state.get("dir"), str) and isinstance(state.get("files"), dict)
    ):
        raise BundleError(
            f"{bundle_dir}: the bundle holds no copy of its fitted {kind} encoder (trained before "
            "fuseline stored one); retrain it (dvc repro)"
        )
    if Path(state["dir"]).is_absolute():
        raise BundleError(f"{bundle_dir}: the fitted {kind} encoder's path must be relative to the bundle")
    directory = Path(bundle_dir) / state["dir"]
    if state_digests(directory) != state["files"]:
        raise BundleError(
            f"{directory}: the fitted {kind} encoder's files are missing or changed after training "
            "(digest mismatch); retrain or restore them"
        )
    return directory.resolve()


def _read_manifest(directory: Path) -> dict[str, str] | None:
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
