"""Any Hugging Face transformer as a sentence encoder: mean pooling plus L2 normalisation.

Mean pooling over real tokens is what sentence-transformers models are trained with, and it
is a reasonable default for plain encoders too; normalising makes dot products cosines, so
downstream heads see embeddings on one scale whatever the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F

from modelzoo.encoders.base import TextEncoder

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Pack a batch (HuggingFaceTextEncoder._packed) only where its estimated cost is this share of
# the padded batch's or less: the estimate counts FLOPs, not the packed path's mask and gathers.
PACKING_MARGIN = 0.8
# Tokenizers report this (or larger) when they do not know their model's limit.
_UNKNOWN_MAX_LENGTH = 1_000_000
# Files a Hugging Face tokenizer may read besides those its class names (`vocab_files_names`):
# transformers falls back to vocab.json / vocab.txt / merges.txt when tokenizer.json is absent.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors that are not padding, so batch padding never shifts a row."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    summed = (hidden * mask).sum(dim=1)  # (B, D)
    counts = mask.sum(dim=1).clamp(min=1e-9)  # (B, 1)
    return summed / counts  # (B, D)


def looks_like_local_path(name: str) -> bool:
    """True for names that can only mean a directory, never a hub id like `org/model`.

    Lets a missing local model fail at once instead of going to the hub, which retries for
    most of a minute when there is no network.
    """
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


Loaded = TypeVar("Loaded")


def load_by_name(
    name_or_path: str,
    label: str,
    load: Callable[..., Loaded],
    what: str = "local weights",
    errors: tuple[type[Exception], ...] = (OSError, ValueError),
) -> Loaded:
    """`load(directory, local_files_only=True)` for a local directory, else `load(hub_id)`.

    Every failure becomes an OSError naming the model (`label` is e.g. "text encoder"), so a
    typo in params.yaml reads as such rather than as a transformers traceback; a name that
    can only be a directory and does not exist fails at once, without asking the hub.
    """
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        try:
            return load(local, local_files_only=True)
        except errors as err:
            raise OSError(
                f"{label} {name_or_path!r}: no {what} were found in {local} "
                f"that transformers can load ({err})"
            ) from err
    if looks_like_local_path(name_or_path):
        raise OSError(
            f"{label} {name_or_path!r}: not a registered name and no local weights were "
            f"found: directory {local} does not exist"
        )
    try:
        return load(name_or_path)
    except errors as err:
        raise OSError(
            f"{label} {name_or_path!r}: not a registered name and no local weights "
            f"were found: no such directory, not in the Hugging Face cache, and the hub "
            f"could not provide it ({err})"
        ) from err


def load_hf_model(
    name_or_path: str | Path, preprocessor: str, *, local_files_only: bool = False
) -> tuple[PreTrainedModel, Any]:
    """The model in float32 and the preprocessor of its inputs (transformers' Auto class `preprocessor`).

    float32 is the dtype CPU feature extraction is fast and exact in; the preprocessor is
    `AutoTokenizer` for text, `AutoFeatureExtractor` for audio.
    """
    import transformers

    processor = getattr(transformers, preprocessor).from_pretrained(
        str(name_or_path), local_files_only=local_files_only
    )
    model = transformers.AutoModel.from_pretrained(
        str(name_or_path), local_files_only=local_files_only, dtype=torch.float32
    )
    return model, processor


def load_hf_pretrained(
    name_or_path: str | Path, *, local_files_only: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (float32) and tokenizer."""
    return load_hf_model(name_or_path, "AutoTokenizer", local_files_only=local_files_only)


class HuggingFaceTextEncoder(TextEncoder):
    """A transformer's last hidden states, mean-pooled and L2-normalised to (B, hidden_size)."""

    pooling = "mean"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_id: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.dim = int(model.config.hidden_size)
        self.max_positions = _max_positions(model, tokenizer)
        self.tokenizer_digest = tokenizer_digest(tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> HuggingFaceTextEncoder:
        """Load a local directory, or a hub id from the local cache (or the hub when online).

        Every failure becomes an OSError naming the model, so a typo in params.yaml reads as
        such rather than as a transformers traceback.
        """
        model, tokenizer = load_by_name(name_or_path, "text encoder", load_hf_pretrained)
        return cls(model, tokenizer, model_id=name_or_path)

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        """Pad to the batch's own longest row: padding to max_length would waste most compute.

        Truncation is capped at what the position embeddings can hold, so a generous
        max_length in params.yaml cannot index past them.
        """
        if max_length < 2:
            raise ValueError(f"max_length must leave room for special tokens, got {max_length}")
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=min(max_length, self.max_positions),
            return_tensors="pt",
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids, attention_mask: (B, T)
        if self._packs(input_ids) and packing_pays(attention_mask, self._pair_cost):
            pooled = self._packed(input_ids, attention_mask)  # (B, D)
        else:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            pooled = mean_pool(hidden, attention_mask)  # (B, D)
        return F.normalize(pooled, p=2, dim=1)  # (B, D)

    def _packs(self, input_ids: torch.Tensor) -> bool:
        """Whether this forward may run packed: a BERT-family model, inference on a CPU.

        BERT takes explicit position ids and an additive 4-D mask, so its packed output is the
        padded one to float rounding (1e-7 on MiniLM); other families number positions their own
        way (RoBERTa from its padding index) and keep the padded forward. On a GPU the padded
        batch runs in parallel anyway, and that path is the one tested there.
        """
        return (
            self.model.config.model_type == "bert"
            and input_ids.device.type == "cpu"
            and not self.training
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")  # the mask is float32
        )

    @property
    def _pair_cost(self) -> float:
        """Attention's cost per (query, key) pair over a dense layer's per token, from the config."""
        config = self.model.config
        hidden = int(config.hidden_size)
        inner = int(getattr(config, "intermediate_size", 4 * hidden))
        return 4 * hidden / (2 * (4 * hidden * hidden + 2 * hidden * inner))

    def _packed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled states of every row's real tokens, run as one sequence with no padding.

        Each token attends only to its own row's (a block-diagonal additive mask) at the
        position the padded forward gives it, so rows cannot see each other.
        """
        real = attention_mask.bool()  # (B, T)
        rows, width = real.shape
        positions = torch.arange(width, device=input_ids.device).expand(rows, width)[real]  # (N,)
        row_of = torch.arange(rows, device=input_ids.device)[:, None].expand(rows, width)[real]  # (N,)
        blocked = row_of[:, None] != row_of[None, :]  # (N, N)
        mask = torch.zeros(blocked.shape, dtype=torch.float32, device=input_ids.device)
        mask = mask.masked_fill(blocked, torch.finfo(torch.float32).min)[None, None]  # (1, 1, N, N)
        tokens = input_ids[real][None]  # (1, N)
        hidden = self.model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions[None],
            token_type_ids=torch.zeros_like(tokens),
        ).last_hidden_state[0]  # (N, D)
        summed = torch.zeros(rows, hidden.shape[1], dtype=hidden.dtype, device=hidden.device)
        summed = summed.index_add_(0, row_of, hidden)
        counts = real.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)  # (B, 1)
        return summed / counts  # (B, D)


def packing_pays(attention_mask: torch.Tensor, pair_cost: float) -> bool:
    """Whether one unpadded sequence costs less than the padded batch.

    Padding spends a dense layer on every pad token; packing spends attention on every pair of
    the batch's tokens, across rows too. A small batch of mixed lengths (a served 8-row
    request's 16 texts: 160-200 real tokens in a 16 x 20-32 batch) packs; a large batch of
    similar lengths (extraction's length-sorted chunks, once there are more texts than one
    chunk holds) has little padding and would pay N^2 attention, so it stays padded.
    """
    rows, width = attention_mask.shape
    real = float(attention_mask.sum())
    padded = rows * width * (1.0 + pair_cost * width)
    packed = real * (1.0 + pair_cost * real)
    return packed < PACKING_MARGIN * padded


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of the tokenizer's class and of the files it was loaded from, read once per load.

    The weights digest misses a changed vocabulary, yet the same weights fed other token ids
    give other vectors. Files are found where the tokenizer was loaded from (a directory, or a
    hub id's snapshot in the local cache); every file it may read is hashed, not only the one
    this transformers version prefers (about 0.7 MB for MiniLM). A tokenizer with no files to
    find (built in memory) is digested by its vocabulary instead.
    """
    digest = hashlib.sha256(type(tokenizer).__qualname__.encode())
    source = str(getattr(tokenizer, "name_or_path", "") or "")
    names = sorted({*_TOKENIZER_FILES, *getattr(tokenizer, "vocab_files_names", {}).values()})
    found = False
    for name in names:
        path = _tokenizer_file(source, name)
        if path is None:
            continue
        content = path.read_bytes()
        digest.update(f"\0{name}\0{len(content)}\0".encode())
        digest.update(content)
        found = True
    if not found:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return digest.hexdigest()[:16]


def _tokenizer_file(source: str, name: str) -> Path | None:
    """`name` in the local directory `source`, or in hub id `source`'s cached snapshot; None if absent."""
    if not source:
        return None  # Path("") is the working directory, which is no tokenizer's
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / name
        return path if path.is_file() else None
    if looks_like_local_path(source):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, name)
    except ValueError:  # not a valid hub id: nothing cached under it
        return None
    return Path(cached) if isinstance(cached, str) else None


def _max_positions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """Longest input the model accepts; the tokenizer knows offsets (RoBERTa) the config hides."""
    from_tokenizer = int(getattr(tokenizer, "model_max_length", _UNKNOWN_MAX_LENGTH))
    if from_tokenizer < _UNKNOWN_MAX_LENGTH:
        return from_tokenizer
    from_config = getattr(model.config, "max_position_embeddings", None)
    return int(from_config) if from_config else _UNKNOWN_MAX_LENGTH
