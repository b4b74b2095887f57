"""An image CNN cut in two (modelzoo.encoders.split): the feature map entering its last N residual
blocks (not stages: those hold 1 to 4 blocks of very different cost), and those blocks with the
head conv/norm and pooling. Layouts: EfficientNet (timm, efficientnet_lite0 too: conv_stem, bn1,
blocks, conv_head, bn2, global_pool) and ResNet (timm, torchvision: conv1, bn1, act1/relu,
maxpool, layer1..4, global_pool or avgpool + flatten), on `encoder.model` or `.backbone`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from modelzoo.encoders.base import ImageEncoder
from modelzoo.encoders.split import FrozenLower, SplitTop, network_of

__all__ = ["ImageTop", "LowerImage", "splittable"]

SETTING = "encoders.image.finetune.blocks"  # named in every refusal, so the user knows what to change


@dataclass(frozen=True)
class _Layout:
    """A network's modules in the order its forward runs them (shared, never copied here)."""

    family: str
    stem: tuple[nn.Module, ...]  # before the first block
    blocks: tuple[nn.Module, ...]  # every residual block, stages flattened
    head: tuple[nn.Module, ...]  # after the last block, before pooling (EfficientNet: conv_head, bn2)
    pool: tuple[nn.Module, ...]  # (B, C, h, w) -> (B, C)


def _has(network: nn.Module, *names: str) -> bool:
    return all(isinstance(getattr(network, name, None), nn.Module) for name in names)


def _layout(encoder: ImageEncoder) -> _Layout:
    """The encoder's network as stem, blocks, head and pool; ValueError for another layout."""
    net = network_of(encoder)
    layout = _layout_of(net)
    if layout is None:
        raise ValueError(
            f"image encoder {getattr(encoder, 'model_id', type(encoder).__name__)!r} ({type(net).__name__}): "
            f"{SETTING} can fine-tune only EfficientNet-style (conv_stem, blocks, conv_head, bn2) or "
            "ResNet-style (conv1, layer1..layer4) networks; set it to 0 to keep this encoder frozen"
        )
    return layout


def splittable(network: nn.Module) -> bool:
    """Whether a network (bare, even on the meta device) has a layout whose last blocks can be
    split: cheap, it only looks at the modules (the split's probe remains the real test)."""
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


class LowerImage(FrozenLower):
    """Images (B, 3, S, S) -> the feature map (B, C, h, w) entering the last blocks; holds the
    base encoder's own stem and first blocks (shared, not copied)."""

    def __init__(self, encoder: ImageEncoder, depth: int) -> None:
        layout = _layout(encoder)
        super().__init__(depth, len(layout.blocks))
        self.net = nn.Sequential(*layout.stem, *layout.blocks[:depth])

    def run(self, images: Tensor) -> Tensor:  # (B, 3, S, S), normalised with the encoder's preprocessing
        return self.net(images)  # (B, C, h, w)


class ImageTop(SplitTop):
    """Feature maps (B, C, h, w) -> the image embedding (B, D).

    BatchNorm stays in eval mode even while training: its affine weights learn, its running
    statistics (from ImageNet's millions of images) are kept, because a fine-tuning batch of 32
    images of one task would estimate them worse and make a row's embedding depend on its batch.
    """

    part, kind, unit, where = "blocks", "image", "blocks", "last"
    lower = LowerImage
    needs = f"{SETTING} needs a network whose forward is stem, blocks, head, pooling"

    def __init__(self, encoder: ImageEncoder, depth: int) -> None:
        layout = _layout(encoder)
        super().__init__(encoder, layout.blocks, depth, head=layout.head, pool=layout.pool)
        self.family = layout.family

    def train(self, mode: bool = True) -> ImageTop:
        """Train mode for everything but BatchNorm, which keeps its running statistics (see above)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, maps: Tensor) -> Tensor:  # (B, C, h, w), the lower part's output
        return self.pool(self.head(self.blocks(maps)))  # (B, D)

    @staticmethod
    def probe(encoder: ImageEncoder, lower: FrozenLower, top: SplitTop) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(2, 3, 64, 64, generator=generator)  # (P, 3, S, S): every layout takes 32 up
        probe = probe.to(next(encoder.parameters()).device).contiguous(memory_format=torch.channels_last)
        return encoder(probe), top(lower(probe))  # (P, D) each
