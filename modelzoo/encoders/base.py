"""The two encoder contracts the pipeline relies on.

The pipeline only ever talks to these interfaces, so a registered encoder, a Hugging Face
model name, or a timm/torchvision name all look the same to feature extraction and caching.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ImagePreprocessing:
    """How raw RGB pixels must be prepared for an image encoder (applied outside modelzoo)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class TextEncoder(nn.Module):
    """Tokenised text (B, T) -> one embedding per row (B, dim)."""

    dim: int
    model_id: str
    pooling: str

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        """Tokenise a batch, padded to its own longest row (not to max_length)."""
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ImageEncoder(nn.Module):
    """Normalised images (B, 3, H, W) -> one pooled embedding per image (B, dim)."""

    dim: int
    model_id: str
    preprocessing: ImagePreprocessing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over parameters and buffers in key order.

    Part of an encoder's fingerprint: same name with other weights must not reuse features.
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
