"""Fine-tune the text encoder's top layers end to end with the fusion head, cheaply.

Only the top N transformer layers learn, so what the frozen lower layers compute is a pure
function of the text: it is computed once per distinct text and kept in a content-addressed
cache (tasks.train.lower_cache), and an epoch runs only the top layers (forward and
backward) and the head. On a CPU an epoch of fine-tuning two of MiniLM's six layers then
costs about one frozen extraction pass.

The cache holds, per (encoder fingerprint, lower layer count, max_length) namespace, one
float16 (T, H) array of real-token hidden states per text, named by the text's SHA-256:

    <cache_dir>/hidden/<namespace>/<aa>/<sha256>.npy

The loop itself (discriminative learning rates, warm-up then linear decay, early stopping,
the best epoch kept, seeded and deterministic on CPU, bf16 autocast on CUDA) is the one every
fine-tunable modality shares: tasks.train.finetune_loop. Here is what is text's own: the
hidden-state cache, texts per row, and padding a batch of hidden states to its longest text.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from modelzoo.encoders.huggingface import HuggingFaceTextEncoder
from modelzoo.encoders.loading import encoder_fingerprint, load_text_encoder
from modelzoo.encoders.split import rebuild_top
from modelzoo.encoders.text_finetune import LowerText, TextTop, lower_text, split_text_encoder
from tasks.config import FusionConfig, TrainConfig
from tasks.device import pick_device
from tasks.modalities.text import TextEncoderConfig, TextModality
from tasks.train.dataset import FeatureSet
from tasks.train.finetune_loop import (
    BUCKET_BATCHES,
    FineTuned,
    LowerRows,
    Part,
    check_columns,
    fit_with_top,
    lower_rows,
    predict_with_top,
    split_indices,
)
from tasks.train.lower_cache import LowerOutputCache

__all__ = [
    "BUCKET_BATCHES",
    "FineTunedText",
    "HiddenStateCache",
    "load_finetuned_top",
    "load_hf_text_encoder",
    "predict_finetuned",
    "text_block",
    "text_digest",
    "train_finetuned",
]

CACHE_FORMAT = "float16-real-tokens/v1"  # bump when what an entry holds changes
# Dropout on attention probabilities while fine-tuning: off, because on a CPU it disables the
# fused attention kernel and costs ~50% of an epoch (modelzoo.encoders.text_finetune.
# set_attention_dropout); the layers' hidden-state dropout and the head's dropout remain.
ATTENTION_DROPOUT = 0.0
# On a GPU each new (batch, length) shape costs a one-off kernel choice; with every length from
# 1 to max_length in play, epochs 2+ of petfinder took 4-9x epoch 1 on an H200. Lengths rounded
# up to a multiple of this leave a few dozen shapes. A CPU showed no such cost: it pads exactly.
CUDA_PAD_MULTIPLE = 16
SETTING = "encoders.text.finetune"
TEXT = TextModality.name  # the modality whose encoder this fine-tunes

Texts = dict[str, list[str | None]]


@dataclass
class FineTunedText(FineTuned):
    """FineTuned with the text top (`top` is a TextTop) and its depth."""

    layers: int = 0  # top layers fine-tuned

    @property
    def texts_computed(self) -> int:
        """Distinct texts run through the lower layers by this call."""
        return self.computed

    @property
    def texts_read(self) -> int:
        """Distinct texts whose hidden states came from the cache."""
        return self.read


def text_block(column: str) -> str:
    """The feature block a text column's embedding fills."""
    return f"text.{column}"


# --- the hidden-state cache -----------------------------------------------------------------------


class HiddenStateCache(LowerOutputCache[str]):
    """Lower-layer hidden states by text: one float16 (T, H) array of real tokens per text."""

    noun = TEXT

    def __init__(
        self,
        cache_dir: Path,
        encoder: HuggingFaceTextEncoder,
        lower: LowerText,
        max_length: int,
        batch_size: int,
        device: torch.device | None = None,
        progress: bool = True,
    ) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its pool would fight torch's threads
        self.encoder = encoder
        self.max_length = max_length
        self.tokens = min(max_length, encoder.max_positions)  # longest entry the tokenizer makes
        super().__init__(cache_dir, lower, batch_size, device, progress)

    def describe(self) -> dict[str, Any]:
        """Everything that decides an entry: the encoder (by weights), the split point, max_length."""
        return {
            "format": CACHE_FORMAT,
            "encoder": encoder_fingerprint(self.encoder, max_length=self.max_length),
            "lower_layers": self.lower.layers,
            "max_length": self.max_length,
        }

    def states(self, texts: list[str]) -> dict[str, Tensor]:
        """digest -> (T, H) float16 CPU hidden states of each distinct text (T real tokens)."""
        return self.outputs({text_digest(text): text for text in texts})

    def plausible(self, array: np.ndarray) -> bool:
        return array.ndim == 2 and array.shape[1] == self.lower.dim and 1 <= array.shape[0] <= self.tokens

    def order(self, missing: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Shortest first, so each batch pads little."""
        return sorted(missing, key=lambda item: (len(item[1]), item[1]))

    def lower_batches(self, batches: list[list[tuple[str, str]]]) -> Iterator[list[Tensor | None]]:
        for batch in batches:
            tokens = self.encoder.tokenize([text for _, text in batch], self.max_length)
            ids = tokens["input_ids"].to(self.device)  # (B, T)
            mask = tokens["attention_mask"].to(self.device)  # (B, T)
            hidden = self.lower(ids, mask).float().cpu()  # (B, T, H), float32 on every device
            lengths = tokens["attention_mask"].sum(dim=1).tolist()
            yield [hidden[i, :length].half().contiguous() for i, length in enumerate(lengths)]  # (T_i, H)


def text_digest(text: str) -> str:
    """SHA-256 of the text exactly as the tokenizer gets it (as the feature cache keys texts)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- texts per row --------------------------------------------------------------------------------


def _is_text(value: object) -> bool:
    """A blank or missing cell is absent, as align decides presence."""
    return isinstance(value, str) and value.strip() != ""


def _text_rows(texts: Texts, cache: HiddenStateCache) -> LowerRows:
    distinct = {text for column in texts.values() for text in column if _is_text(text)}
    states = cache.states(sorted(distinct))  # type: ignore[arg-type]
    keys = {
        column: [text_digest(text) if _is_text(text) else None for text in values]  # type: ignore[arg-type]
        for column, values in texts.items()
    }
    return lower_rows(keys, states, length=lambda state: int(state.shape[0]))


def _pad(states: list[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Pad to the batch's longest text: ((b, T, H) float32, (b, T) int64 mask of real tokens)."""
    lengths = torch.tensor([state.shape[0] for state in states])  # (b,)
    hidden = pad_sequence(states, batch_first=True)  # (b, T, H) float16
    if device.type == "cuda":
        extra = -hidden.shape[1] % CUDA_PAD_MULTIPLE
        hidden = nn.functional.pad(hidden, (0, 0, 0, extra))  # (b, T', H), T' a multiple
    mask = (torch.arange(hidden.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).long()  # (b, T)
    return hidden.to(device=device, dtype=torch.float32), mask.to(device)


def _part(top: TextTop) -> Part:
    return Part(TEXT, top, top.dim, _pad, SETTING)


# --- training and prediction ----------------------------------------------------------------------


def train_finetuned(
    features: FeatureSet,
    texts: Texts,
    task: str,
    fusion: FusionConfig,
    train: TrainConfig,
    text: TextEncoderConfig,
    cache_dir: Path,
    progress: bool = True,
    base_encoder: HuggingFaceTextEncoder | None = None,
    deadline: float | None = None,
    metric: str | None = None,
) -> FineTunedText:
    """Fit `fusion.head` and the text encoder's top `text.finetune.layers` layers together.

    `texts[column]` holds the raw text of every row (all splits, aligned with
    `features.ids`); its embedding replaces block `text.<column>`. One top serves every text
    column, as one frozen encoder did. `base_encoder` saves loading `text.model` again.
    `deadline` (time.time()) ends training after the epoch that passes it, keeping the best
    epoch so far, as train_model does for `train.time_limit`; `metric` picks that epoch as
    there (None: val loss).
    """
    layers = text.finetune.layers
    if layers < 1:
        raise ValueError("encoders.text.finetune.layers is 0 (a frozen encoder): train with train_model")
    check_columns(features, texts, TEXT)
    split_indices(features)  # before the lower pass: a split without train or val rows fails now
    encoder = base_encoder if base_encoder is not None else load_hf_text_encoder(text.model)
    lower, top = split_text_encoder(encoder, layers, attention_dropout=ATTENTION_DROPOUT)
    device = pick_device(train.device)

    started = time.perf_counter()
    cache = HiddenStateCache(cache_dir, encoder, lower, text.max_length, text.batch_size, device, progress)
    rows = _text_rows(texts, cache)
    lower_seconds = time.perf_counter() - started

    fitted = fit_with_top(features, rows, _part(top), task, fusion, train, text.finetune, text.batch_size,
                          progress, deadline, metric)  # fmt: skip
    return FineTunedText.of(fitted, lower_seconds, cache, layers=layers)


def predict_finetuned(
    head: nn.Module,
    top: TextTop,
    features: FeatureSet,
    texts: Texts,
    task: str,
    target_scaling: tuple[float, float] | None,
    text: TextEncoderConfig,
    cache_dir: Path,
    base_encoder: HuggingFaceTextEncoder | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Predictions in tasks.train.training.predict's form, text blocks recomputed by `top`.

    The lower hidden states come through the same cache as in training, so known texts cost
    nothing. Runs where `head` lives; `features` holds the blocks the head was trained on.
    """
    check_columns(features, texts, TEXT)
    encoder = base_encoder if base_encoder is not None else load_hf_text_encoder(text.model)
    device = next(head.parameters()).device
    lower = lower_text(encoder, top.lower_layers)
    cache = HiddenStateCache(cache_dir, encoder, lower, text.max_length, text.batch_size, device, progress)
    rows = _text_rows(texts, cache)
    return predict_with_top(head, _part(top), features, rows, task, target_scaling, text.batch_size)


# --- rebuilding -----------------------------------------------------------------------------------


def load_hf_text_encoder(name: str) -> HuggingFaceTextEncoder:
    """`text.model` loaded, refusing encoders whose layers cannot be reached (not a transformer)."""
    encoder = load_text_encoder(name)
    if not isinstance(encoder, HuggingFaceTextEncoder):
        raise ValueError(
            f"text encoder {name!r} is not a Hugging Face transformer; only those can be fine-tuned"
        )
    return encoder


def load_finetuned_top(
    text: TextEncoderConfig,
    layers: int,
    state: dict[str, Tensor],
    base_encoder: HuggingFaceTextEncoder | None = None,
) -> TextTop:
    """The fine-tuned top for prediction: built from `text.model` and loaded strictly, in eval mode.

    Raises:
        ValueError: `state` holds another number of layers or does not fit the encoder.
    """
    encoder = base_encoder if base_encoder is not None else load_hf_text_encoder(text.model)
    return rebuild_top(TextTop, encoder, state, expected=layers)
