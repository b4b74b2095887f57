"""Image encoders cut in two (frozen lower part, trainable last blocks): the packaged
efficientnet_lite0, and timm and torchvision ResNets with random weights (nothing downloaded)."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from modelzoo.encoders.base import ImageEncoder, ImagePreprocessing
from modelzoo.encoders.image_finetune import ImageTop, splittable
from modelzoo.encoders.loading import image_architecture, load_image_encoder
from modelzoo.encoders.split import load_top_state, top_state
from modelzoo.encoders.vision import BackboneImageEncoder, strip_classifier

SIZE = 64  # small: every supported network takes any size from 32 up
PREPROCESSING = ImagePreprocessing(image_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def lite0() -> ImageEncoder:
    return load_image_encoder("efficientnet_lite0", SIZE)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    batch = torch.randn(3, 3, SIZE, SIZE, generator=generator)  # (B, 3, S, S)
    return batch.contiguous(memory_format=torch.channels_last)  # as extraction feeds the encoder


def frozen(encoder: ImageEncoder, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder(images)  # (B, D)


def split(lower: nn.Module, top: ImageTop, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return top(lower(images))  # (B, D)


def resnet(kind: str) -> ImageEncoder:
    torch.manual_seed(0)
    if kind == "timm":
        network = timm.create_model("resnet18", pretrained=False, num_classes=0)
    else:
        network = torchvision.models.resnet18(weights=None)
        strip_classifier(network, "torchvision/resnet18")
    return BackboneImageEncoder(network.eval(), f"{kind}/resnet18", 512, PREPROCESSING).eval()


@pytest.mark.parametrize("top_blocks", [1, 2, 16])
def test_split_reproduces_the_frozen_efficientnet_lite0(lite0, images, top_blocks: int) -> None:
    lower, top = ImageTop.split(lite0, top_blocks)
    top.eval()
    difference = (split(lower, top, images) - frozen(lite0, images)).abs().max()
    assert float(difference) <= 1e-6  # the same kernels in the same order: 0.0 on CPU


@pytest.mark.parametrize(("kind", "top_blocks"), [("timm", 1), ("timm", 8), ("torchvision", 3)])
def test_split_reproduces_a_frozen_resnet(kind: str, top_blocks: int, images) -> None:
    encoder = resnet(kind)
    lower, top = ImageTop.split(encoder, top_blocks)
    difference = (split(lower, top.eval(), images) - frozen(encoder, images)).abs().max()
    assert float(difference) <= 1e-6


def test_a_block_is_a_residual_block_not_a_stage(lite0) -> None:
    assert ImageTop.count(lite0) == 16  # lite0's 7 stages hold 1, 2, 2, 3, 3, 4 and 1 blocks
    assert ImageTop.count(resnet("timm")) == 8  # resnet18: 2 basic blocks in each of 4 layers


def test_lower_shares_the_encoders_weights_instead_of_copying_them(lite0) -> None:
    lower, _ = ImageTop.split(lite0, 2)
    encoder_weights = {id(p) for p in lite0.parameters()}
    assert all(id(p) in encoder_weights for p in lower.parameters())
    assert lower.depth == 14


def test_training_the_top_keeps_batchnorm_statistics_and_the_base_encoder(lite0, images) -> None:
    before = frozen(lite0, images)
    lower, top = ImageTop.split(lite0, 1)
    top.train()
    statistics = {k: v.clone() for k, v in top.state_dict().items() if "running" in k}
    optimizer = torch.optim.SGD(top.parameters(), lr=0.1)
    top(lower(images)).sum().backward()
    optimizer.step()
    assert all(torch.equal(top.state_dict()[k], v) for k, v in statistics.items())
    assert torch.equal(frozen(lite0, images), before)
    assert float((split(lower, top.eval(), images) - before).abs().max()) > 1e-3  # the top did learn


def test_an_unsupported_network_is_refused_naming_the_setting(images) -> None:
    network = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=0)
    encoder = BackboneImageEncoder(network.eval(), "mobilenetv3_small_100", 1024, PREPROCESSING)
    with pytest.raises(ValueError, match=r"\(MobileNetV3\): encoders.image.finetune.blocks can fine-tune"):
        ImageTop.split(encoder, 1)


def test_more_blocks_than_the_network_has_is_refused(lite0) -> None:
    with pytest.raises(ValueError, match="has 16 blocks; cannot fine-tune the last 17"):
        ImageTop.split(lite0, 17)


def test_state_round_trips_into_a_fresh_top_and_refuses_another_depth(lite0, images) -> None:
    lower, top = ImageTop.split(lite0, 2)
    with torch.no_grad():
        for parameter in top.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))  # as if trained
    restored = ImageTop.rebuild(lite0, top_state(top))
    assert len(restored.blocks) == 2
    torch.testing.assert_close(split(lower, restored, images), split(lower, top.eval(), images))
    _, deeper = ImageTop.split(lite0, 3)
    with pytest.raises(ValueError, match="do not fit 'efficientnet_lite0' with 3 top blocks"):
        load_top_state(deeper, top_state(top))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("efficientnet_lite0", True), ("torchvision/resnet18", True), ("convnext_tiny", False), ("nope", False)],
)
def test_which_architectures_can_be_split_is_known_without_weights(name: str, expected: bool) -> None:
    network = image_architecture(name)
    assert (network is not None and splittable(network)) is expected
