"""Text: each distinct string is encoded once: tokenised for a transformer (MiniLM by default),
or handed over whole to an encoder that reads raw strings (tfidf)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from modelzoo.encoders.base import RawTextEncoder
from modelzoo.encoders.text_finetune import TextTop
from tasks.cache_keys import text_digest
from tasks.contents import Contents, contents_by_value
from tasks.device import autocast_for, batch_size_on, to_device
from tasks.modalities import register
from tasks.modalities.base import EmbeddedModality, FineTuning, known_encoder
from tasks.modalities.files import Prefetched
from tasks.strict import Strict

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from modelzoo.encoders.base import TextEncoder
    from modelzoo.encoders.split import FrozenLower
    from tasks.encode_job import EncodeJob as Extraction

TEXT_INPUT = "utf8-verbatim/v1"
# Characters of a cell handed to the tokenizer, per token of max_length. A tokenizer's memory
# follows the characters it is given, not the tokens it keeps: one 10-million-character cell
# took 1.4 GB and 21 s to give 256 tokens. Ordinary text runs 3 to 6 characters a token, so
# the first cut keeps every token the encoder sees; text that is mostly whitespace, markup or
# long unbroken runs (an inline base64 image) gets the second, and nothing more.
_CHARS_PER_TOKEN = 64
_MOST_CHARS_PER_TOKEN = 1024
# A sorted text longer than PAD_RATIO times its batch's first plus PAD_SLACK_CHARS starts a new
# batch (batch_bounds): short texts pad cheaply, a title padded to a description does not.
PAD_RATIO = 2
PAD_SLACK_CHARS = 64
# Fine-tuning: attention dropout off, as on a CPU it disables the fused attention kernel (~50%
# of an epoch; modelzoo.encoders.text_finetune.set_attention_dropout); other dropouts remain.
ATTENTION_DROPOUT = 0.0
# On a GPU every new (batch, length) shape costs a kernel choice: epochs 2+ of petfinder took
# 4-9x epoch 1 on an H200 until lengths were rounded up to this. A CPU pads exactly.
CUDA_PAD_MULTIPLE = 16
BEST_LAYERS = 2  # what `train.preset: best` fine-tunes when params leave the encoder frozen


class TextFinetuneConfig(Strict):
    """End-to-end fine-tuning of the text encoder's top layers together with the fusion head.

    The frozen lower layers' output is computed once per distinct text and cached, so an epoch
    runs only the layers that learn. `layers: 0` keeps the encoder frozen (plain embeddings).
    """

    layers: int = Field(0, ge=0, le=48)  # top transformer layers trained; 0 = frozen encoder
    lr: float = Field(5e-5, gt=0)  # encoder learning rate: well below the head's train.lr
    warmup: float = Field(0.1, ge=0, lt=1)  # share of steps with a linear LR warm-up
    epochs: int = Field(8, ge=1)  # each epoch costs about one frozen extraction pass
    batch_size: int = Field(32, ge=1)  # texts per step
    # epochs without progress on val before it stops: past its best epoch, fine-tuning on a few
    # thousand rows overfits, and each further epoch costs a pass (train.patience is the heads')
    patience: int = Field(2, ge=1)


class TfidfConfig(Strict):
    """`model: tfidf`: TF-IDF of word 1-2 grams fitted on the train rows' distinct texts, then a
    truncated SVD to `dim` (tasks/features/tfidf.py). Read only when the model is tfidf."""

    dim: int = Field(128, ge=1, le=4096)  # SVD components = embedding width; clipped to what the data allows
    min_df: int = Field(2, ge=1)  # a term must occur in at least this many distinct train texts
    max_features: int = Field(200_000, ge=2)  # most frequent terms kept; the state holds dim x terms floats
    seed: int = Field(0, ge=0, le=2**32 - 1)  # the randomized SVD's seed


class TextEncoderConfig(Strict):
    """`encoders.text`."""

    model: str = "minilm"
    max_length: int = Field(256, ge=8, le=8192)
    batch_size: int = Field(64, ge=1)
    finetune: TextFinetuneConfig = TextFinetuneConfig()
    tfidf: TfidfConfig = TfidfConfig()

    @field_validator("model")
    @classmethod
    def _resolvable(cls, value: str) -> str:
        from modelzoo.encoders.loading import hub_name_problem  # torch: only when validating

        return known_encoder(hub_name_problem(TextModality.name, value), value)

    @model_validator(mode="after")
    def _fitted_encoders_have_no_layers(self) -> TextEncoderConfig:
        if self.finetune.layers and TextModality().fitted(self.model):
            raise ValueError(
                f"finetune.layers: the {self.model!r} encoder has no layers to fine-tune; set it to 0"
            )
        return self


class TextFineTuning(FineTuning):
    """The top N transformer layers learn; the lower layers' hidden states of every distinct text
    are cached (float16, real tokens only), and a batch is padded to its longest text."""

    top_class = TextTop
    depth_key = "layers"
    cost = 2  # an epoch on MiniLM's top layers costs about a frozen pass, more than an image block
    cache_format = "float16-real-tokens/v1"
    split_options = {"attention_dropout": ATTENTION_DROPOUT}

    @classmethod
    def best_depth(cls, modality: EmbeddedModality, model: str) -> int:
        return 0 if modality.fitted(model) else BEST_LAYERS  # a fitted encoder (tfidf) has no layers

    def plausible(self, array: np.ndarray, lower: FrozenLower) -> bool:
        tokens = min(self.section.max_length, self.encoder.max_positions)  # the longest entry there is
        return array.ndim == 2 and array.shape[1] == self.encoder.dim and 1 <= array.shape[0] <= tokens

    def order(self, missing: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        return sorted(missing, key=lambda item: (len(item[1]), item[1]))  # each batch pads little

    def lower_batches(
        self, lower: FrozenLower, batches: list[list[tuple[str, Any]]], device: torch.device
    ) -> Iterator[list[torch.Tensor | None]]:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its pool would fight torch's threads
        for batch in batches:
            tokens = self.encoder.tokenize([text for _, text in batch], self.section.max_length)
            hidden = lower(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))  # (B, T, H)
            hidden = hidden.float().cpu()  # float32 on every device
            lengths = tokens["attention_mask"].sum(dim=1).tolist()
            yield [hidden[i, :length].half().contiguous() for i, length in enumerate(lengths)]  # (T_i, H)

    def length(self, output: torch.Tensor) -> int:
        return int(output.shape[0])

    def collate(self, outputs: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
        """Padded to the batch's longest text: (b, T, H) float32 and the (b, T) int64 mask of real tokens."""
        lengths = torch.tensor([output.shape[0] for output in outputs])  # (b,)
        hidden = pad_sequence(outputs, batch_first=True)  # (b, T, H) float16
        if device.type == "cuda":
            extra = -hidden.shape[1] % CUDA_PAD_MULTIPLE
            hidden = nn.functional.pad(hidden, (0, 0, 0, extra))  # (b, T', H), T' a multiple
        mask = (torch.arange(hidden.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).long()  # (b, T)
        return hidden.to(device=device, dtype=torch.float32), mask.to(device)


class TextModality(EmbeddedModality):
    name = "text"
    order = 1
    input_version = TEXT_INPUT
    encoder_config = TextEncoderConfig
    size_key = "max_length"
    verbatim_cells = True
    raw_text = True
    fine_tuning = TextFineTuning

    def load_encoder(self, model: str, size: int) -> nn.Module:
        """A registered name, a Hugging Face id or directory, or a fitted state directory (tfidf)."""
        from modelzoo.encoders.loading import load_text_encoder  # transformers: only when encoding

        return load_text_encoder(model)

    def contents(self, table: pd.DataFrame, columns: list[str], root: Path | None, source: str) -> Contents:
        return contents_by_value(table, columns, self.name, text_digest)

    def encoding_order(self, contents: Contents, misses: np.ndarray) -> np.ndarray:
        # similar lengths share a batch, so each pads little
        return np.array(
            sorted(misses, key=lambda s: (len(contents.sources[s]), contents.sources[s])), np.int64
        )

    def encode_chunk(self, job: Extraction, index: int) -> tuple[np.ndarray, np.ndarray, float]:
        slots = job.chunk(index)
        texts = [job.contents.sources[s] for s in slots]
        if isinstance(job.encoder, RawTextEncoder):
            vectors, forward = encode_raw_texts(job.encoder, texts)
            return vectors, np.ones(len(slots), dtype=bool), forward
        batch = batch_size_on(job.device, job.spec.batch_size)
        vectors, forward = encode_sorted_texts(job.encoder, texts, job.spec.size, batch, job.device)  # type: ignore[arg-type]
        return vectors, np.ones(len(slots), dtype=bool), forward


def encode_sorted_texts(
    encoder: TextEncoder, texts: list[str], max_length: int, batch_size: int, device: torch.device
) -> tuple[np.ndarray, float]:
    """(N, dim) float32 embeddings of `texts`, which the caller sorted by length; + forward seconds.

    Tokenised a batch at a time, each padded only to its own longest row, one batch ahead on
    a thread (the Rust tokenizer releases the GIL): in line, tokenising took 3 % of the
    extraction on the demo. The tokenizer's own parallel pool stays off: it would spin beside
    torch's threads between batches and slow the forward on a small CPU.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    forward = 0.0
    bounds = batch_bounds([len(text) for text in texts], batch_size)
    starts = [start for start, _ in bounds]
    batches = Prefetched((_tokenized(encoder, texts[s:e], max_length) for s, e in bounds), 2)
    try:
        with torch.inference_mode(), autocast_for(device):
            for start, tokens in zip(starts, batches, strict=True):
                input_ids = to_device(tokens["input_ids"], device)  # (B, T)
                mask = to_device(tokens["attention_mask"], device)  # (B, T)
                began = time.perf_counter()
                vectors = encoder(input_ids, mask)  # (B, dim)
                out[start : start + len(vectors)] = vectors.float().cpu().numpy()
                forward += time.perf_counter() - began
    finally:
        batches.close()
    return out, forward


def batch_bounds(lengths: list[int], batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of each batch of texts sorted by length: at most `batch_size` texts, and a
    text far longer than the batch's first starts the next one.

    Every text in a batch is padded to its longest. One API request holds a row's few texts
    (a title of 30 characters, a description of 300): in one batch the title cost as much as
    the description. Sorted extraction batches rarely span such a jump, so they stay full.
    """
    bounds: list[tuple[int, int]] = []
    start = 0
    for end in range(1, len(lengths) + 1):
        full = end - start == batch_size
        if end == len(lengths) or full or lengths[end] > PAD_RATIO * lengths[start] + PAD_SLACK_CHARS:
            bounds.append((start, end))
            start = end
    return bounds


def _tokenized(encoder: TextEncoder, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    return encoder.tokenize(bounded_texts(encoder, texts, max_length), max_length)


def bounded_texts(encoder: TextEncoder, texts: list[str], max_length: int) -> list[str]:
    """The texts cut to the characters their first `max_length` tokens can come from.

    A text longer than max_length * _CHARS_PER_TOKEN keeps that many characters when half of
    them already fill the encoder's window (so no token in it comes from a word the cut
    split); otherwise it keeps max_length * _MOST_CHARS_PER_TOKEN. Short texts are untouched.
    """
    keep = max_length * _CHARS_PER_TOKEN
    if all(len(text) <= keep for text in texts):
        return texts
    window = min(max_length, int(getattr(encoder, "max_positions", max_length)))
    return [text if len(text) <= keep else _cut(encoder, text, max_length, window) for text in texts]


def _cut(encoder: TextEncoder, text: str, max_length: int, window: int) -> str:
    keep = max_length * _CHARS_PER_TOKEN
    tokens = encoder.tokenize([text[: keep // 2]], max_length)["attention_mask"]  # (1, T)
    if int(tokens.sum()) >= window:
        return text[:keep]
    return text[: max_length * _MOST_CHARS_PER_TOKEN]


def encode_raw_texts(encoder: RawTextEncoder, texts: list[str]) -> tuple[np.ndarray, float]:
    """(N, dim) float32 from an encoder that reads whole strings (no tokenizer, no truncation).

    Slices of `encoder.batch_texts`, in float32 whatever the device: these encoders are sparse
    products, which autocast has no bf16 path for (extraction records them as float32).
    """
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    step = max(1, encoder.batch_texts)
    began = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(texts), step):
            batch = texts[start : start + step]
            out[start : start + len(batch)] = encoder(batch).float().cpu().numpy()  # (B, dim)
    return out, time.perf_counter() - began


register(TextModality())
