"""The model bundle: weights as safetensors plus everything needed to predict again.

A bundle holds no pickle: weights are safetensors and the rest is JSON, so loading a bundle
from someone else can never execute code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from modelzoo.registry import lookup
from tasks.config import FusionConfig
from tasks.errors import BundleError

WEIGHTS = "model.safetensors"
META = "bundle.json"
FORMAT_VERSION = 1
BASELINES = "baselines"  # single-modality bundles live in <models>/baselines/<modality>/


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
    # wide_deep's fitted hashing state (tasks/wide.py), so prediction builds the same id blocks.
    wide: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["classes"] = list(self.classes)
        data["target_scaling"] = list(self.target_scaling) if self.target_scaling else None
        return {"format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BundleMeta:
        data = dict(data)
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise BundleError(f"bundle format {version!r} is not supported (expected {FORMAT_VERSION})")
        data["classes"] = tuple(data["classes"])
        data["target_scaling"] = tuple(data["target_scaling"]) if data["target_scaling"] else None
        return cls(**data)


def write_bundle(directory: Path, model: nn.Module, meta: BundleMeta) -> None:
    """Write weights and metadata into an existing (temporary) directory."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    (directory / META).write_text(json.dumps(meta.to_json(), indent=2, sort_keys=True) + "\n")


def build_head(meta: BundleMeta) -> nn.Module:
    """An untrained head of the bundle's architecture."""
    fusion = FusionConfig.model_validate(meta.fusion)
    head_cls = lookup("head", fusion.head)
    return head_cls(dict(meta.in_dims), meta.out_dim, fusion.head_config())


def load_bundle(directory: Path) -> tuple[nn.Module, BundleMeta]:
    """The trained head (eval mode, CPU) and its metadata; refuses anything but safetensors."""
    directory = Path(directory)
    meta_path, weights_path = directory / META, directory / WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise BundleError(f"{directory}: not a model bundle (expected {META} and {WEIGHTS})")
    try:
        meta = BundleMeta.from_json(json.loads(meta_path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as err:
        raise BundleError(f"{meta_path}: unreadable bundle metadata ({err})") from None
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise BundleError(f"{weights_path}: not a valid safetensors file ({err}); refusing to load") from None
    _check_shapes(meta, state, meta_path, weights_path)
    try:
        model = build_head(meta)
    except (ValueError, TypeError, KeyError) as err:  # pydantic's ValidationError is a ValueError
        raise BundleError(f"{meta_path}: cannot build the declared head ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise BundleError(f"{weights_path}: weights do not fit the declared head ({err})") from None
    return model.eval(), meta


def _check_shapes(
    meta: BundleMeta, state: dict[str, torch.Tensor], meta_path: Path, weights_path: Path
) -> None:
    """Compare the declared head with the weights before allocating it.

    The head is first built on the `meta` device, which allocates nothing, so a crafted
    bundle.json declaring absurd input sizes is refused instead of exhausting memory.
    """
    try:
        with torch.device("meta"):
            skeleton = build_head(meta)
    except (ValueError, TypeError, KeyError) as err:
        raise BundleError(f"{meta_path}: cannot build the declared head ({err})") from None
    except (NotImplementedError, RuntimeError):  # a head that cannot be built without data
        return
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    actual = {name: tuple(t.shape) for name, t in state.items()}
    if expected != actual:
        differ = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
        shown = ", ".join(f"{k}: declared {expected.get(k)}, stored {actual.get(k)}" for k in differ[:3])
        raise BundleError(f"{weights_path}: weights do not fit the declared head ({shown})")


def baseline_dirs(models: Path) -> dict[str, Path]:
    """Baseline bundles by modality, as train wrote them."""
    root = Path(models) / BASELINES
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir()} if root.is_dir() else {}
