"""The three encoder contracts the pipeline relies on (text, image, audio).

The pipeline only ever talks to these interfaces, so a registered encoder, a Hugging Face
model name, or a timm/torchvision name all look the same to feature extraction and caching.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
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
    # What decides token ids besides the weights (the tokenizer's vocabulary and settings), as
    # a digest taken at load; part of the fingerprint, since a changed vocabulary feeds the same
    # weights other ids. None for encoders with no separate tokenizer (tfidf: its weights
    # digest covers its vocabulary).
    tokenizer_digest: str | None = None

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        """Tokenise a batch, padded to its own longest row (not to max_length)."""
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class RawTextEncoder(TextEncoder):
    """A text encoder that reads whole strings itself: no tokenizer, no max_length (TF-IDF).

    The text modality calls `forward(texts)` on slices of `batch_texts` strings instead of
    tokenising. Such encoders are cheap per text, so extraction hands them `chunk_contents`
    texts per chunk (one Prefect task each) rather than `cache.chunk_rows`: at a million
    rows, a task per thousand texts would cost more than the encoding.
    """

    batch_texts: int = 4096  # strings per forward
    chunk_contents: int = 65536  # distinct texts per extraction chunk (and cache shard)

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        raise TypeError(f"text encoder {self.model_id!r} reads raw strings: call it on a list of texts")

    def forward(self, texts: list[str]) -> torch.Tensor:  # type: ignore[override]
        """(B,) strings -> (B, dim) float32."""
        raise NotImplementedError


class ImageEncoder(nn.Module):
    """Normalised images (B, 3, H, W) -> one pooled embedding per image (B, dim)."""

    dim: int
    model_id: str
    preprocessing: ImagePreprocessing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class AudioEncoder(nn.Module):
    """Mono float32 waveforms at `sample_rate`, cut by the caller into `window_samples` windows -> (B, dim).

    The caller resamples each clip to `sample_rate`, scales it to max |x| = 1 when
    `peak_normalise` is set (silence stays silent; some models' reference pipelines did this
    and their weights expect it), cuts it into windows of exactly `window_samples`
    (zero-padding a short clip) and pools the window embeddings itself. `featurize` runs on
    the CPU in the data loader; `forward` takes its tensors, moved to the model's device.
    """

    dim: int
    model_id: str
    sample_rate: int
    window_samples: int
    peak_normalise: bool

    def featurize(self, windows: np.ndarray) -> dict[str, torch.Tensor]:
        """(B, window_samples) float32 -> the keyword arguments of forward, as CPU tensors."""
        raise NotImplementedError

    def forward(self, **features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def check_windows(windows: np.ndarray, window_samples: int, model_id: str) -> np.ndarray:
    """`windows` as a C-contiguous (B, window_samples) float32 array, or a ValueError saying why not.

    Strict on length: an encoder fed windows of another length would compute features the
    cache key (which records window_samples) does not describe.
    """
    array = np.asarray(windows)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != window_samples:
        raise ValueError(
            f"audio encoder {model_id!r} takes a non-empty (batch, {window_samples}) array of "
            f"windows, got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"audio encoder {model_id!r} takes float waveforms, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"audio encoder {model_id!r}: windows contain NaN or infinite samples")
    return array


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
