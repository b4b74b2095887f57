"""Any timm or torchvision ImageNet backbone as an image encoder, classifier removed.

Lets params.yaml name an image backbone that has no module of its own. Both libraries fetch
weights on first use (timm from the Hugging Face hub, torchvision from download.pytorch.org)
and read them from their local caches afterwards; offline with a cold cache, loading fails
with an OSError that says so.
"""

from __future__ import annotations

import torch
from torch import nn

from modelzoo.encoders.base import ImageEncoder, ImagePreprocessing

TORCHVISION_PREFIX = "torchvision/"
# Attributes torchvision classification models keep their classifier under.
_TORCHVISION_HEADS = ("fc", "classifier", "heads", "head")


class BackboneImageEncoder(ImageEncoder):
    """Wraps a network whose forward already yields pooled features (B, dim)."""

    def __init__(
        self, backbone: nn.Module, model_id: str, dim: int, preprocessing: ImagePreprocessing
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.model_id = model_id
        self.dim = dim
        self.preprocessing = preprocessing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (B, 3, H, W), normalised with self.preprocessing
        return self.backbone(images)  # (B, dim)


def timm_image_encoder(name: str, image_size: int) -> BackboneImageEncoder:
    """timm model with pretrained weights and `num_classes=0`, timm's own pooled-feature mode.

    Mean and std come from the weights' pretrained config, since that is what they were
    trained on; the input size is the caller's, as timm's convnets accept any size.
    """
    import timm
    import timm.data

    # `hf-hub:org/repo` names are resolved by create_model itself, not the model registry.
    if not name.startswith("hf-hub:") and not timm.is_model(name):
        raise ValueError(
            f"image encoder {name!r}: not a registered name, not a {TORCHVISION_PREFIX}<arch> name "
            f"and not a timm model; no local weights were found for it"
        )
    try:
        backbone = timm.create_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError) as err:
        raise OSError(
            f"image encoder {name!r}: no local weights were found: not in the timm / Hugging "
            f"Face cache and they could not be downloaded ({err})"
        ) from err
    config = timm.data.resolve_model_data_config(backbone)
    # With the classifier removed, forward returns the pre-logits features; for models with
    # a hidden pre-logits layer (MobileNetV3) that is head_hidden_size, not num_features.
    dim = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
    preprocessing = ImagePreprocessing(
        image_size=image_size, mean=_triple(config["mean"]), std=_triple(config["std"])
    )
    return BackboneImageEncoder(backbone, model_id=name, dim=dim, preprocessing=preprocessing)


def torchvision_image_encoder(name: str, image_size: int) -> BackboneImageEncoder:
    """torchvision model (`torchvision/<arch>`) with its DEFAULT weights, last Linear removed.

    Only the final Linear of the head is replaced, so heads that normalise or flatten the
    pooled features first (ConvNeXt, Swin) keep doing so.
    """
    import torchvision.models

    arch = name.removeprefix(TORCHVISION_PREFIX)
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT  # type: ignore[attr-defined]
    except ValueError as err:
        raise ValueError(
            f"image encoder {name!r}: torchvision has no model {arch!r}; no local weights were found for it"
        ) from err
    try:
        backbone = torchvision.models.get_model(arch, weights=weights)
    except OSError as err:
        raise OSError(
            f"image encoder {name!r}: no local weights were found: not in the torch hub cache "
            f"and they could not be downloaded ({err})"
        ) from err
    dim = strip_classifier(backbone, name)
    transforms = weights.transforms()
    preprocessing = ImagePreprocessing(
        image_size=image_size, mean=_triple(transforms.mean), std=_triple(transforms.std)
    )
    return BackboneImageEncoder(backbone, model_id=name, dim=dim, preprocessing=preprocessing)


def strip_classifier(model: nn.Module, name: str) -> int:
    """Replace the head's last Linear by Identity in place; returns its input width."""
    for attribute in _TORCHVISION_HEADS:
        head = getattr(model, attribute, None)
        if isinstance(head, nn.Linear):
            setattr(model, attribute, nn.Identity())
            return head.in_features
        if isinstance(head, nn.Sequential):
            linear_positions = [i for i, layer in enumerate(head) if isinstance(layer, nn.Linear)]
            if linear_positions:
                last = linear_positions[-1]
                width = head[last].in_features
                head[last] = nn.Identity()
                return int(width)
    raise ValueError(f"image encoder {name!r}: no Linear classifier found to remove")


def _triple(values: object) -> tuple[float, float, float]:
    """Per-channel statistics as exactly three floats, which ImagePreprocessing stores."""
    floats = tuple(float(v) for v in values)  # type: ignore[attr-defined]
    if len(floats) != 3:
        raise ValueError(f"expected RGB statistics, got {floats}")
    return floats  # type: ignore[return-value]
