"""Any Hugging Face audio model (wav2vec2, HuBERT, WavLM, AST, ...) as a window encoder.

The model's own feature extractor does the front end, so whatever the model was trained on
(raw normalised samples, or a filterbank) is what it gets; the window embedding is the mean
of the last hidden states over time. No peak normalisation: these extractors standardise
loudness themselves where their model needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from modelzoo.encoders.base import AudioEncoder, check_windows
from modelzoo.encoders.huggingface import load_by_name, load_hf_model, mean_pool

if TYPE_CHECKING:
    from transformers import PreTrainedModel
    from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor


def load_hf_audio_pretrained(
    name_or_path: str | Path, *, local_files_only: bool = False
) -> tuple[PreTrainedModel, SequenceFeatureExtractor]:
    """Model (float32) and its feature extractor."""
    return load_hf_model(name_or_path, "AutoFeatureExtractor", local_files_only=local_files_only)


def frame_mask(
    model: PreTrainedModel, frames: int, attention_mask: torch.Tensor | None
) -> torch.Tensor | None:
    """The per-frame mask for a per-sample one, when it can be known; None means all frames count.

    Speech models downsample samples to frames by their conv stack and say how; a mask that
    is already per frame is used as is.
    """
    if attention_mask is None:
        return None
    if attention_mask.shape[-1] == frames:
        return attention_mask
    downsample = getattr(model, "_get_feature_vector_attention_mask", None)
    if downsample is None:
        return None
    return downsample(frames, attention_mask)


class HuggingFaceAudioEncoder(AudioEncoder):
    """Last hidden states (B, T, D) of a transformers audio model, mean-pooled over time to (B, D)."""

    WINDOW_SECONDS = 10  # what AST-style models take in one go; speech models accept any length

    def __init__(self, model: PreTrainedModel, extractor: SequenceFeatureExtractor, model_id: str) -> None:
        super().__init__()
        self.model = model
        self.extractor = extractor
        self.model_id = model_id
        self.dim = int(model.config.hidden_size)
        self.sample_rate = int(extractor.sampling_rate)
        self.window_samples = self.WINDOW_SECONDS * self.sample_rate
        self.peak_normalise = False

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> HuggingFaceAudioEncoder:
        """A local directory or a hub id, as for text; every failure is an OSError naming the model.

        A model that loads but has no hidden size, or an extractor with no sampling rate, is
        refused here: it is no audio encoder, and would otherwise fail deep in extraction.
        """
        model, extractor = load_by_name(
            name_or_path,
            "audio encoder",
            load_hf_audio_pretrained,
            what="audio model and feature extractor",
            errors=(OSError, ValueError, KeyError),
        )
        if not hasattr(model.config, "hidden_size") or not hasattr(extractor, "sampling_rate"):
            raise OSError(
                f"audio encoder {name_or_path!r}: {type(model).__name__} with "
                f"{type(extractor).__name__} is not an audio encoder (no hidden_size or sampling_rate)"
            )
        return cls(model, extractor, model_id=name_or_path)

    def featurize(self, windows: np.ndarray) -> dict[str, torch.Tensor]:
        """The extractor's tensors for a (B, window_samples) batch, padded to the batch."""
        array = check_windows(windows, self.window_samples, self.model_id)
        batch = self.extractor(
            list(array),
            sampling_rate=self.sample_rate,
            padding=True,
            return_tensors="pt",
        )
        return {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}

    def forward(self, **features: torch.Tensor) -> torch.Tensor:
        hidden = self.model(**features).last_hidden_state  # (B, T, D)
        mask = frame_mask(self.model, hidden.shape[1], features.get("attention_mask"))
        if mask is None:
            return hidden.mean(dim=1)  # (B, D)
        return mean_pool(hidden, mask)  # (B, D)
