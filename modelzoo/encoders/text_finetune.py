"""A BERT-like text encoder cut in two (modelzoo.encoders.split): frozen lower layers, trainable top.

For Hugging Face encoders (BERT, MiniLM, RoBERTa, XLM-R, ELECTRA, ...) whose layers take
(hidden states, attention mask) and whose output is the last layer's; the probe refuses others.
"""

from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import Tensor, nn

from modelzoo.encoders.huggingface import HuggingFaceTextEncoder, mean_pool
from modelzoo.encoders.split import FrozenLower, SplitTop

__all__ = ["LowerText", "TextTop", "layers_of", "set_attention_dropout"]

# Where BERT-like models keep their layers, relative to the base model.
_LAYER_PATHS: tuple[tuple[str, str], ...] = (
    ("encoder", "layer"),  # BERT, MiniLM, RoBERTa, XLM-R, ELECTRA, MPNet
    ("encoder", "layers"),
    ("transformer", "layer"),  # DistilBERT
    ("transformer", "layers"),
)
_PROBE = ["Splitting must not change the embedding.", "short", "a third, somewhat longer probe text here"]
# Names self-attention modules give their query/key/value projections (BERT, DistilBERT, MPNet).
_QKV_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q", "k", "v"))


def layers_of(encoder: HuggingFaceTextEncoder) -> tuple[tuple[str, ...], nn.ModuleList]:
    """Its transformer layers and their attribute path from `encoder.model`; ValueError for an
    encoder that is not a Hugging Face transformer or keeps no layer list where BERT-like ones do."""
    if not isinstance(encoder, HuggingFaceTextEncoder):
        raise ValueError(
            f"text encoder {getattr(encoder, 'model_id', type(encoder).__name__)!r} is not a Hugging Face "
            "transformer; only those can have their top layers fine-tuned"
        )
    model = encoder.model
    base = getattr(model, "base_model", model)  # a task model (…ForMaskedLM) wraps its base model
    base_prefix = getattr(model, "base_model_prefix", "") if base is not model else ""
    for outer, inner in _LAYER_PATHS:
        path = (base_prefix, outer, inner) if base_prefix else (outer, inner)
        module: object = model
        for name in path:
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return path, module
    looked = ", ".join(".".join(p) for p in _LAYER_PATHS)
    raise ValueError(
        f"text encoder {encoder.model_id!r} ({type(model).__name__}): no transformer layer list found "
        f"(looked for {looked}); fine-tuning top layers needs a BERT-like encoder"
    )


class LowerText(FrozenLower):
    """Tokens (B, T) -> hidden states (B, T, H) after the first `depth` layers: the model with its
    layer list cut short (weights shared), run by its own forward for embeddings and masks."""

    def __init__(self, encoder: HuggingFaceTextEncoder, depth: int) -> None:
        path, layers = layers_of(encoder)
        super().__init__(depth, len(layers))
        self.model = _truncated(encoder.model, path, depth)

    def run(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:  # (B, T) each
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)


class TextTop(SplitTop):
    """Hidden states (B, T, H) and their mask (B, T) -> the sentence embedding (B, H), pooled and
    normalised as the encoder does; `attention_dropout` replaces its layers' attention dropout."""

    part, kind, unit, where = "layers", "text", "transformer layers", "top"
    lower = LowerText
    needs = "its layers need more inputs than hidden states and an attention mask"

    def __init__(
        self, encoder: HuggingFaceTextEncoder, depth: int, attention_dropout: float | None = None
    ) -> None:
        super().__init__(encoder, layers_of(encoder)[1], depth)
        # Read only for the mask format its layers expect (sdpa, eager, ...); not a module.
        self.config = encoder.model.config
        if attention_dropout is not None:
            set_attention_dropout(self, attention_dropout)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        # hidden: (B, T, H) float, attention_mask: (B, T) 1 for real tokens
        from transformers.masking_utils import create_bidirectional_mask

        # (B, 1, T, T) bool, additive float or None (no padding), whatever the layers' attention wants
        mask = create_bidirectional_mask(self.config, hidden, attention_mask)
        for layer in self.layers:
            out = layer(hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out  # (B, T, H); older layers return tuples
        pooled = mean_pool(hidden, attention_mask)  # (B, H)
        return F.normalize(pooled, p=2, dim=1)  # (B, H)

    @staticmethod
    def probe(encoder: HuggingFaceTextEncoder, lower: FrozenLower, top: SplitTop) -> tuple[Tensor, Tensor]:
        tokens = encoder.tokenize(_PROBE, max_length=32)
        device = next(encoder.parameters()).device
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        return encoder(ids, mask), top(lower(ids, mask), mask)  # (P, H) each


def set_attention_dropout(top: TextTop, p: float) -> int:
    """Set the dropout on attention probabilities in the top's layers; returns how many were set.

    Attention dropout turns PyTorch's fused CPU attention (sdpa) off: a MiniLM epoch took ~50% more.
    Found as the `dropout` of modules owning query/key/value projections (other layouts: 0 set)."""
    count = 0
    for module in top.layers.modules():
        dropout = getattr(module, "dropout", None)
        owns_qkv = any(all(hasattr(module, name) for name in names) for names in _QKV_NAMES)
        if owns_qkv and isinstance(dropout, nn.Dropout):
            dropout.p = p
            count += 1
    return count


def _truncated(module: nn.Module, path: tuple[str, ...], keep: int) -> nn.Module:
    """A shallow copy of `module` whose layer list (at `path`) holds only its first `keep` layers:
    only the child tables along the path are copied, every weight stays shared."""
    if not path:
        return nn.ModuleList(list(module)[:keep])  # type: ignore[call-overload]
    name, rest = path[0], path[1:]
    clone = copy.copy(module)
    clone._modules = dict(module._modules)  # own child table; the children are still shared
    clone._modules[name] = _truncated(module._modules[name], rest, keep)  # type: ignore[arg-type]
    return clone
