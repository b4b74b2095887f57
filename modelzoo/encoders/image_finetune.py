"""An image encoder cut in two: a frozen lower part and a trainable top of its last N blocks.

Fine-tuning only the last N residual blocks means the feature map entering them never
changes, so it can be computed once per distinct image and cached; an epoch then runs only
the blocks that learn. `LowerImage` maps normalised images to the feature map before the
last N blocks, and `ImageTop` maps that feature map to the embedding through those blocks,
the network's head conv/norm (EfficientNet) and the very pooling the frozen encoder uses, so
with untouched weights the two halves together give the frozen encoder's embeddings.

A block is one residual block (an EfficientNet inverted residual, a ResNet bottleneck), not
a stage: stages hold 1 to 4 blocks of very different cost, blocks give a finer dial.

Two layouts are known, found on the network the encoder wraps (`encoder.model` or
`encoder.backbone`):

- EfficientNet-style (timm EfficientNet, so efficientnet_lite0 too): conv_stem, bn1, the
  `blocks` stages, conv_head, bn2, global_pool;
- ResNet-style (timm ResNet and torchvision ResNet): conv1, bn1, act1/relu, maxpool,
  layer1..layer4, then global_pool (timm) or avgpool + flatten (torchvision).

Splitting runs a short probe through both halves and compares it with the whole encoder, so
a network that only looks like one of these fails loudly instead of training a model that
silently differs from the one that was asked for.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from modelzoo.encoders.base import ImageEncoder
from modelzoo.encoders.split import PROBE_TOLERANCE, load_top_state, rebuild_top, split_difference, top_state

__all__ = [
    "ImageTop",
    "LowerImage",
    "block_count",
    "load_top_state",
    "lower_image",
    "split_image_encoder",
    "splittable",
    "top_from_state",
    "top_state",
]

SETTING = "encoders.image.finetune.blocks"  # named in every refusal, so the user knows what to change
_PROBE_SIZE = 64  # every supported network takes any size from 32 up; small keeps the probe cheap
_PROBE_BATCH = 2


@dataclass(frozen=True)
class _Layout:
    """A network's modules in the order its forward runs them (shared, never copied here)."""

    family: str
    stem: tuple[nn.Module, ...]  # before the first block
    blocks: tuple[nn.Module, ...]  # every residual block, stages flattened
    head: tuple[nn.Module, ...]  # after the last block, before pooling (EfficientNet: conv_head, bn2)
    pool: tuple[nn.Module, ...]  # (B, C, h, w) -> (B, C)


def _network(encoder: ImageEncoder) -> nn.Module:
    for attribute in ("model", "backbone"):
        network = getattr(encoder, attribute, None)
        if isinstance(network, nn.Module):
            return network
    return encoder


def _has(network: nn.Module, *names: str) -> bool:
    return all(isinstance(getattr(network, name, None), nn.Module) for name in names)


def _layout(encoder: ImageEncoder) -> _Layout:
    """The encoder's network as stem, blocks, head and pool.

    Raises:
        ValueError: neither an EfficientNet-style nor a ResNet-style network.
    """
    net = _network(encoder)
    layout = _layout_of(net)
    if layout is None:
        raise ValueError(
            f"image encoder {getattr(encoder, 'model_id', type(encoder).__name__)!r} ({type(net).__name__}): "
            f"{SETTING} can fine-tune only EfficientNet-style (conv_stem, blocks, conv_head, bn2) or "
            "ResNet-style (conv1, layer1..layer4) networks; set it to 0 to keep this encoder frozen"
        )
    return layout


def splittable(network: nn.Module) -> bool:
    """Whether a network (bare, even on the meta device) has a layout whose last blocks can be split.

    Cheap: it only looks at the modules. The probe in split_image_encoder remains the real test.
    """
    return _layout_of(network) is not None


def _layout_of(net: nn.Module) -> _Layout | None:
    if _has(net, "conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool"):
        blocks = tuple(block for stage in net.blocks for block in stage)  # type: ignore[union-attr]
        return _Layout(
            "efficientnet", (net.conv_stem, net.bn1), blocks, (net.conv_head, net.bn2), (net.global_pool,)
        )
    resnet_stages = ("layer1", "layer2", "layer3", "layer4")
    activation = "act1" if _has(net, "act1") else "relu"
    if _has(net, "conv1", "bn1", activation, "maxpool", *resnet_stages):
        stem = (net.conv1, net.bn1, getattr(net, activation), net.maxpool)
        blocks = tuple(block for name in resnet_stages for block in getattr(net, name))
        if _has(net, "global_pool"):  # timm
            return _Layout("resnet", stem, blocks, (), (net.global_pool,))
        if _has(net, "avgpool"):  # torchvision
            return _Layout("resnet", stem, blocks, (), (net.avgpool, nn.Flatten(1)))
    return None


def block_count(encoder: ImageEncoder) -> int:
    """How many residual blocks the encoder's network has (stages flattened)."""
    return len(_layout(encoder).blocks)


class LowerImage(nn.Module):
    """Images (B, 3, S, S) -> the feature map (B, C, h, w) entering the last N blocks; frozen.

    Holds the base encoder's own stem and first blocks (shared, not copied), so it costs no
    memory. Always in eval mode and without gradients: what it computes is cached, so it
    must be a pure function of the image (BatchNorm on running statistics, no dropout).
    """

    def __init__(self, encoder: ImageEncoder, blocks: int) -> None:
        super().__init__()
        layout = _layout(encoder)
        total = len(layout.blocks)
        if not 0 <= blocks <= total:
            raise ValueError(f"lower blocks must be in [0, {total}], got {blocks}")
        self.blocks = blocks
        self.total_blocks = total
        self.model_id = encoder.model_id
        self.net = nn.Sequential(*layout.stem, *layout.blocks[:blocks])
        self.eval()

    def train(self, mode: bool = True) -> LowerImage:
        """Stays in eval mode: batch statistics here would make cached maps depend on the batch."""
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        # images: (B, 3, S, S), normalised with the encoder's preprocessing
        with torch.no_grad():
            return self.net(images)  # (B, C, h, w)


class ImageTop(nn.Module):
    """Feature maps (B, C, h, w) -> the image embedding (B, D), as the frozen encoder pools it.

    Holds deep copies of the last N blocks, the head conv/norm and the pooling, so training
    them leaves the base encoder (and every cached lower map) untouched. BatchNorm layers stay
    in eval mode even while training: their affine weights learn, their running statistics
    (from ImageNet's millions of images) are kept, because a fine-tuning batch of 32 images
    of one task would estimate them worse and make a row's embedding depend on its batch.
    """

    part = "blocks"  # its state keys are blocks.<i>.… (modelzoo.encoders.split)

    def __init__(self, encoder: ImageEncoder, blocks: int) -> None:
        super().__init__()
        layout = _layout(encoder)
        total = len(layout.blocks)
        if not 1 <= blocks <= total:
            raise ValueError(
                f"image encoder {encoder.model_id!r} has {total} blocks; cannot fine-tune the last "
                f"{blocks} ({SETTING}: 1 to {total}, or 0 for a frozen encoder)"
            )
        self.blocks = nn.Sequential(*(copy.deepcopy(block) for block in layout.blocks[total - blocks :]))
        self.head = nn.Sequential(*(copy.deepcopy(module) for module in layout.head))
        self.pool = nn.Sequential(*(copy.deepcopy(module) for module in layout.pool))
        self.family = layout.family
        self.total_blocks = total
        self.lower_blocks = total - blocks
        self.dim = encoder.dim
        self.model_id = encoder.model_id
        self.train(encoder.training)

    def train(self, mode: bool = True) -> ImageTop:
        """Train mode for everything but BatchNorm, which keeps its running statistics (see above)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, maps: Tensor) -> Tensor:
        # maps: (B, C, h, w), the lower part's output
        return self.pool(self.head(self.blocks(maps)))  # (B, D)


def split_image_encoder(
    encoder: ImageEncoder, top_blocks: int, check: bool = True
) -> tuple[LowerImage, ImageTop]:
    """The frozen stem and first blocks, and a trainable copy of the last `top_blocks`.

    `check` runs a small random probe through both halves and compares with the whole encoder.

    Raises:
        ValueError: an unsupported network, N outside 1..blocks, or a split that does not
            reproduce the encoder.
    """
    top = ImageTop(encoder, top_blocks)
    lower = LowerImage(encoder, top.lower_blocks)
    if check:
        _check_split(encoder, lower, top)
    return lower, top


def lower_image(encoder: ImageEncoder, blocks: int) -> LowerImage:
    """Only the frozen part, for computing (cached) feature maps when the top already exists."""
    return LowerImage(encoder, blocks)


def top_from_state(encoder: ImageEncoder, state: dict[str, Tensor]) -> ImageTop:
    """A fresh top built from the base encoder with `state` loaded, in eval mode."""
    return rebuild_top(ImageTop, encoder, state)


def _check_split(encoder: ImageEncoder, lower: LowerImage, top: ImageTop) -> None:
    parameter = next(encoder.parameters())
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(_PROBE_BATCH, 3, _PROBE_SIZE, _PROBE_SIZE, generator=generator)  # (P, 3, S, S)
    probe = probe.to(parameter.device).contiguous(memory_format=torch.channels_last)
    was_training, encoder_training = top.training, encoder.training
    top.eval()
    encoder.eval()
    with torch.no_grad():
        whole = encoder(probe)  # (P, D)
        split = top.to(parameter.device)(lower(probe))  # (P, D)
    top.train(was_training)
    encoder.train(encoder_training)
    difference = split_difference(whole, split) if whole.shape == split.shape else float("inf")
    if not difference <= PROBE_TOLERANCE:
        raise ValueError(
            f"image encoder {encoder.model_id!r} ({type(_network(encoder)).__name__}): its last blocks "
            f"cannot be run apart from the rest (embeddings differ by {difference:.3g}); {SETTING} "
            "needs a network whose forward is stem, blocks, head, pooling"
        )
