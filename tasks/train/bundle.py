"""The model bundle: weights as safetensors plus everything needed to predict again.

A bundle holds no pickle: weights are safetensors and the rest is JSON, so loading a bundle
from someone else can never execute code.

bundle.json is plain text that anyone can edit, and an edit that still parses can be silent
and wrong: swapped class names invert every prediction, a third class on a one-output head is
ignored, an `image_root` pointed elsewhere makes prediction read other files. So a bundle
carries a digest of its two parts (SHA-256 of the weights file, and of the metadata's
canonical JSON without the digest), and loading refuses a bundle whose parts no longer match
it. The digest is no signature (whoever edits the file can recompute it), so every loaded
bundle is also checked for consistency (task, outputs and classes agree) and its declared head
is compared with the stored weights on the meta device, which allocates nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from tasks.config import FusionConfig
from tasks.errors import BundleError
from tasks.scores.metric_names import METRICS, PRIMARY_METRIC
from tasks.train.dataset import FeatureSet, with_blocks
from tasks.train.training import TargetScaling, build_head, predict

WEIGHTS = "model.safetensors"
META = "bundle.json"
# 2: bundle.json carries "digest" (format 1 bundles had none and cannot be verified).
FORMAT_VERSION = 2
DIGEST = "digest"
BASELINES = "baselines"  # single-modality bundles live in <models>/baselines/<modality>/
TASKS = ("binary", "multiclass", "multilabel", "regression")


@dataclass(frozen=True)
class BundleMeta:
    """What a bundle says about itself (the JSON half)."""

    task: str
    fusion: dict[str, Any]
    in_dims: dict[str, int]
    out_dim: int
    classes: tuple[str, ...]
    target_scaling: tuple[float, float] | None
    encoders: dict[str, Any]
    tabular: dict[str, Any] | None
    best_epoch: int
    params: dict[str, Any]
    # wide_deep's fitted hashing state (tasks/features/wide.py), so prediction builds the same id blocks.
    wide: dict[str, Any] | None = None
    # The fused bundle's record of lineage.parquet (tasks/train/lineage.py): the rows it was trained,
    # validated and tested on, the file's SHA-256 and the split settings. None: bundles trained before.
    lineage: dict[str, Any] | None = None
    # How the training data typed the target (int, float, bool, str; tasks/data/ingest.target_type),
    # so prediction gives labels back in that type. None: bundles trained before (labels as strings).
    target_type: str | None = None
    # The metric it was selected on (`evaluate.metric` resolved for the task): what the monitor
    # scores it by. None: bundles trained before the choice existed (the task's default).
    metric: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["classes"] = list(self.classes)
        data["target_scaling"] = list(self.target_scaling) if self.target_scaling else None
        return {"format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BundleMeta:
        data = dict(data)
        data.pop(DIGEST, None)
        _check_format_version(data.pop("format_version", None))
        if not isinstance(data.get("classes"), list):
            raise TypeError(f"classes must be a list, got {type(data.get('classes')).__name__}")
        data["classes"] = tuple(data["classes"])
        data["target_scaling"] = tuple(data["target_scaling"]) if data["target_scaling"] else None
        return cls(**data)


def meta_digest(data: dict[str, Any]) -> str:
    """SHA-256 of bundle.json's content as canonical JSON, leaving out the digest itself.

    Canonical (sorted keys, no whitespace) so that re-indenting the file is not an edit.
    """
    body = {key: value for key, value in data.items() if key != DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_bundle(directory: Path, model: nn.Module, meta: BundleMeta) -> None:
    """Write weights and metadata (with the digest of both) into an existing (temporary) directory."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = save_safetensors(state)
    # The digest covers the metadata as a reader will parse it back (tuples as lists, keys as strings).
    data = json.loads(json.dumps(meta.to_json()))
    data[DIGEST] = {"weights": hashlib.sha256(weights).hexdigest(), "meta": meta_digest(data)}
    (directory / WEIGHTS).write_bytes(weights)
    (directory / META).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def head_of(meta: BundleMeta) -> nn.Module:
    """An untrained head of the bundle's architecture."""
    fusion = FusionConfig.model_validate(meta.fusion)
    return build_head(fusion, dict(meta.in_dims), meta.out_dim)  # training builds its heads the same way


def predict_with(model: nn.Module, meta: BundleMeta, features: FeatureSet) -> np.ndarray:
    """Predictions of a bundle's model on the given rows."""
    scaling = TargetScaling(*meta.target_scaling) if meta.target_scaling else None
    return predict(model, with_blocks(features, meta.in_dims), meta.task, scaling)


def load_bundle(directory: Path) -> tuple[nn.Module, BundleMeta]:
    """The trained head (eval mode, CPU) and its metadata; refuses anything but an intact bundle."""
    meta, state, meta_path, weights_path = _read_verified(Path(directory))
    try:
        model = head_of(meta)
    except (ValueError, TypeError, KeyError, RuntimeError) as err:  # pydantic's ValidationError: ValueError
        raise BundleError(f"{meta_path}: cannot build the declared head ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise BundleError(f"{weights_path}: weights do not fit the declared head ({err})") from None
    return model.eval(), meta


def verify_bundle(directory: Path) -> BundleMeta:
    """Every check load_bundle makes, without building the head: a cheap refusal before real work."""
    return _read_verified(Path(directory))[0]


def _read_verified(directory: Path) -> tuple[BundleMeta, dict[str, torch.Tensor], Path, Path]:
    """Metadata and weights that passed every check, and the two files' paths.

    Checks, in order: both files exist, bundle.json is UTF-8 JSON of this format, the weights
    are safetensors, both parts match the digest written with them, the metadata is
    consistent, and the declared head has exactly the stored weights' shapes (built on the
    meta device, so an absurd declared size costs no memory).
    """
    meta_path, weights_path = directory / META, directory / WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise BundleError(f"{_show(directory)}: not a model bundle (expected {META} and {WEIGHTS})")
    data = _read_meta_json(meta_path)
    _check_format_version(data.get("format_version"), meta_path)
    weights = _read_bytes(weights_path)
    try:
        state = load_safetensors(weights)
    except (SafetensorError, ValueError, OSError) as err:
        raise BundleError(f"{weights_path}: not a valid safetensors file ({err}); refusing to load") from None
    _check_digest(data, weights, meta_path, weights_path)
    try:
        meta = BundleMeta.from_json(data)
    except (TypeError, KeyError, ValueError) as err:
        raise BundleError(f"{meta_path}: unreadable bundle metadata ({err})") from None
    check_consistency(meta, meta_path)
    _check_shapes(meta, state, meta_path, weights_path)
    return meta, state, meta_path, weights_path


def check_consistency(meta: BundleMeta, meta_path: Path | str = META) -> None:
    """Refuse metadata whose task, outputs and classes disagree, naming the field.

    These hold for every bundle train writes, so they are checked whatever the digest says:
    a third class on a one-output head would be silently ignored, and so on.
    """
    problem = _inconsistency(meta)
    if problem is not None:
        raise BundleError(f"{meta_path}: {problem}; refusing to load")


def _inconsistency(meta: BundleMeta) -> str | None:
    """The first field that contradicts the others, as words; None when all agree."""
    if meta.task not in TASKS:
        return f"task: {meta.task!r} is not one of {', '.join(TASKS)}"
    if not _is_int(meta.out_dim) or meta.out_dim < 1:
        return f"out_dim: must be a positive integer, got {meta.out_dim!r}"
    if not isinstance(meta.in_dims, dict) or not meta.in_dims:
        return "in_dims: must name at least one input block"
    for block, width in meta.in_dims.items():
        if not _is_int(width) or width < 1:
            return f"in_dims: block {block!r} must have a positive integer width, got {width!r}"
    classes = meta.classes
    if not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
        return f"classes: class names must be distinct strings, got {list(classes)!r}"
    return _task_inconsistency(meta)


def _task_inconsistency(meta: BundleMeta) -> str | None:
    """What the task implies about out_dim, classes and target_scaling."""
    n_classes, out_dim = len(meta.classes), meta.out_dim
    if meta.task == "binary" and (out_dim != 1 or n_classes != 2):
        return (
            f"classes: a binary bundle has one output and exactly 2 classes, "
            f"this one declares out_dim {out_dim} and {n_classes} classes {list(meta.classes)!r}"
        )
    if meta.task == "multiclass" and (n_classes < 2 or out_dim != n_classes):
        return (
            f"classes: a multiclass bundle has one output per class (at least 2), "
            f"this one declares out_dim {out_dim} and {n_classes} classes"
        )
    if meta.task == "multilabel" and (n_classes < 1 or out_dim != n_classes):
        return (
            f"classes: a multilabel bundle has one output per label, "
            f"this one declares out_dim {out_dim} and {n_classes} labels"
        )
    if meta.task == "regression":
        if out_dim != 1 or n_classes:
            return f"out_dim: regression has one output and no classes, not {out_dim} and {n_classes}"
        return _scaling_problem(meta.target_scaling) or _metric_problem(meta)
    if meta.target_scaling is not None:
        return f"target_scaling: only a regression bundle has one, this is a {meta.task} bundle"
    return _metric_problem(meta)


def _metric_problem(meta: BundleMeta) -> str | None:
    if meta.metric is None or meta.metric in METRICS[meta.task]:
        return None
    known = ", ".join(METRICS[meta.task])
    return f"metric: {meta.metric!r} does not score a {meta.task} model (one of {known})"


def bundle_metric(meta: BundleMeta) -> str:
    """The metric a bundle was selected on; the task's default for a bundle older than the choice."""
    return meta.metric or PRIMARY_METRIC[meta.task]


def _scaling_problem(scaling: tuple[float, float] | None) -> str | None:
    """A regression bundle's (mean, std): without it predictions would stay standardised."""
    numbers = scaling is not None and len(scaling) == 2 and all(_is_number(v) for v in scaling)
    if not numbers or not all(math.isfinite(v) for v in scaling) or scaling[1] <= 0:
        return f"target_scaling: a regression bundle needs a finite (mean, std > 0), got {scaling!r}"
    return None


def _check_shapes(
    meta: BundleMeta, state: dict[str, torch.Tensor], meta_path: Path, weights_path: Path
) -> None:
    """Compare the declared head with the weights before allocating it.

    The head is first built on the `meta` device, which allocates nothing, so a crafted
    bundle.json declaring absurd sizes is refused instead of exhausting memory. A head that
    cannot be built there (an overflowing size, say) is refused too, never waved through:
    the real build after it would be the allocation this check exists to prevent. Every
    registered head builds on the meta device (tests/tasks/train/test_bundle_integrity.py).
    """
    try:
        with torch.device("meta"):
            skeleton = head_of(meta)
    except Exception as err:  # any failure here means the head cannot be checked: refuse
        raise BundleError(
            f"{meta_path}: cannot build the declared head on the meta device "
            f"({type(err).__name__}: {err}); refusing to load"
        ) from None
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    actual = {name: tuple(t.shape) for name, t in state.items()}
    if expected != actual:
        differ = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
        shown = ", ".join(f"{k}: declared {expected.get(k)}, stored {actual.get(k)}" for k in differ[:3])
        raise BundleError(f"{weights_path}: weights do not fit the declared head ({shown})")


def _read_meta_json(meta_path: Path) -> dict[str, Any]:
    """bundle.json as a dict; anything but a UTF-8 JSON object is a BundleError."""
    raw = _read_bytes(meta_path)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise BundleError(f"{meta_path}: unreadable bundle metadata (not UTF-8: {err})") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise BundleError(f"{meta_path}: unreadable bundle metadata (not JSON: {err})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{meta_path}: unreadable bundle metadata (not a JSON object)")
    return data


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise BundleError(f"{path}: cannot read ({err.strerror or err})") from None


def _check_format_version(version: object, meta_path: Path | str = META) -> None:
    if version == FORMAT_VERSION:
        return
    why = (
        "; it predates bundle digests and cannot be verified: retrain (fuseline stage train) to rewrite it"
        if version == 1
        else ""
    )
    raise BundleError(
        f"{meta_path}: bundle format {version!r} is not supported (expected {FORMAT_VERSION}){why}"
    )


def _check_digest(data: dict[str, Any], weights: bytes, meta_path: Path, weights_path: Path) -> None:
    """Both parts must be the bytes and metadata written together (see the module docstring)."""
    digest = data.get(DIGEST)
    if not isinstance(digest, dict) or not all(isinstance(digest.get(k), str) for k in ("weights", "meta")):
        raise BundleError(
            f"{meta_path}: {META} has no valid {DIGEST!r} (it was edited after the bundle was "
            "written); retrain or restore it"
        )
    if hashlib.sha256(weights).hexdigest() != digest["weights"]:
        raise BundleError(
            f"{weights_path}: {WEIGHTS} changed after the bundle was written (digest mismatch); "
            "retrain or restore it"
        )
    if meta_digest(data) != digest["meta"]:
        raise BundleError(
            f"{meta_path}: {META} was edited after the bundle was written (digest mismatch); "
            "retrain or restore it"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(path: Path) -> str:
    """A path as one printable line (a crafted name may hold newlines or NUL)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def baseline_dirs(models: Path) -> dict[str, Path]:
    """Baseline bundles by modality, as train wrote them."""
    root = Path(models) / BASELINES
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir()} if root.is_dir() else {}
