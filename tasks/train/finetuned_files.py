"""What a member with a fine-tuned encoder top adds to its head bundle, for any modality.

Its directory is a head bundle (bundle.json + model.safetensors, the fusion head) plus:

    <modality>_top.safetensors   the fine-tuned top (text: top layers; image: last blocks)
    finetune.json                kind, depth (under the modality's depth key: layers,
                                 blocks), columns, the encoder settings (under the
                                 modality's name), and the SHA-256 of the top's weights

Reading refuses top weights whose digest differs from the one recorded at training: weights
edited or swapped after training would serve a model nobody evaluated. The base encoder the
top is rebuilt from is named in finetune.json; the bundle's own fingerprint check compares it
with the encoder installed here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

from modelzoo.encoders.split import top_state
from tasks.errors import BundleError

FINETUNE_META = "finetune.json"


def top_weights_name(modality: str) -> str:
    """text_top.safetensors, image_top.safetensors."""
    return f"{modality}_top.safetensors"


def write_top_files(directory: Path, modality: str, top: nn.Module, info: dict[str, Any]) -> None:
    """<modality>_top.safetensors and finetune.json (`info` plus the weights' SHA-256)."""
    weights = save_tensors({key: value.contiguous() for key, value in top_state(top).items()})
    (directory / top_weights_name(modality)).write_bytes(weights)
    meta = {**info, "weights_sha256": hashlib.sha256(weights).hexdigest()}
    (directory / FINETUNE_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_top_files(directory: Path, modality: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """finetune.json and the top's state, after checking the weights are the ones trained.

    Raises:
        BundleError: a file is missing or unreadable, or the weights' digest differs.
    """
    meta_path, weights_path = directory / FINETUNE_META, directory / top_weights_name(modality)
    try:
        info = json.loads(meta_path.read_text(encoding="utf-8"))
        weights = weights_path.read_bytes()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{directory}: unreadable fine-tuned {modality} model ({err})") from None
    if not isinstance(info, dict) or hashlib.sha256(weights).hexdigest() != info.get("weights_sha256"):
        raise BundleError(
            f"{weights_path}: the fine-tuned {modality} weights changed after training (digest mismatch); "
            "retrain or restore them"
        )
    try:
        return info, load_tensors(weights)
    except SafetensorError as err:
        raise BundleError(f"{weights_path}: unreadable fine-tuned {modality} weights ({err})") from None
