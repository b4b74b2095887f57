"""A text encoder cut in two: frozen lower layers and trainable top layers.

Fine-tuning only the top N transformer layers means the lower layers' output never changes,
so it can be computed once per distinct text and cached; an epoch then runs only the layers
that learn. `LowerText` maps tokens to the hidden states after the first L - N layers and
`TextTop` maps those hidden states to the sentence embedding, pooled and normalised exactly
as `HuggingFaceTextEncoder.forward` does, so with untouched weights the two halves together
give the frozen encoder's embeddings.

Works for BERT-like Hugging Face encoders (BERT, MiniLM, RoBERTa, XLM-R, ELECTRA, ...) whose
layers take (hidden states, attention mask) and whose output is the last layer's output.
Splitting checks that on a short probe and refuses a model where it does not hold, rather
than training a model that silently differs from the one that was asked for.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelzoo.encoders.huggingface import HuggingFaceTextEncoder, mean_pool
from modelzoo.encoders.split import PROBE_TOLERANCE, load_top_state, rebuild_top, split_difference, top_state

__all__ = [
    "LowerText",
    "TextTop",
    "layer_count",
    "layer_path",
    "load_top_state",
    "lower_text",
    "set_attention_dropout",
    "split_text_encoder",
    "top_from_state",
    "top_state",
]

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


def layer_path(encoder: HuggingFaceTextEncoder) -> tuple[str, ...]:
    """Attribute path from `encoder.model` to its ModuleList of transformer layers.

    Raises:
        ValueError: the model keeps no layer list where BERT-like models do.
    """
    model = encoder.model
    base = getattr(model, "base_model", model)  # a task model (…ForMaskedLM) wraps its base model
    base_prefix = getattr(model, "base_model_prefix", "") if base is not model else ""
    for outer, inner in _LAYER_PATHS:
        path = (base_prefix, outer, inner) if base_prefix else (outer, inner)
        module: object = model
        for name in path:
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return path
    looked = ", ".join(".".join(p) for p in _LAYER_PATHS)
    raise ValueError(
        f"text encoder {encoder.model_id!r} ({type(model).__name__}): no transformer layer list found "
        f"(looked for {looked}); fine-tuning top layers needs a BERT-like encoder"
    )


def _layer_list(encoder: HuggingFaceTextEncoder) -> nn.ModuleList:
    module: nn.Module = encoder.model
    for name in layer_path(encoder):
        module = getattr(module, name)
    return module  # type: ignore[return-value]


def layer_count(encoder: HuggingFaceTextEncoder) -> int:
    """How many transformer layers the encoder has."""
    return len(_layer_list(encoder))


class LowerText(nn.Module):
    """Tokens (B, T) -> token hidden states (B, T, H) after the first `layers` layers; frozen.

    Shares its weights with the base encoder (a shallow copy whose layer list is cut short),
    so it costs no memory, and runs the model's own forward for embeddings and masks.
    Always in eval mode and without gradients: what it computes is cached, so it must be a
    pure function of the text.
    """

    def __init__(self, encoder: HuggingFaceTextEncoder, layers: int) -> None:
        super().__init__()
        total = layer_count(encoder)
        if not 0 <= layers <= total:
            raise ValueError(f"lower layers must be in [0, {total}], got {layers}")
        self.layers = layers
        self.total_layers = total
        self.dim = encoder.dim
        self.model = _truncated(encoder.model, layer_path(encoder), layers)
        self.eval()

    def train(self, mode: bool = True) -> LowerText:
        """Stays in eval mode: dropout here would make cached states depend on chance."""
        return super().train(False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        # input_ids, attention_mask: (B, T)
        with torch.no_grad():
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state  # (B, T, H)


class TextTop(nn.Module):
    """Hidden states (B, T, H) and their mask (B, T) -> the sentence embedding (B, H).

    Holds deep copies of the encoder's last N layers, so training them leaves the base
    encoder (and every cached lower state) untouched. `attention_dropout`, when given,
    replaces the dropout on the attention probabilities in those layers (see
    `set_attention_dropout`); the other dropouts stay as the encoder has them.
    """

    part = "layers"  # its state keys are layers.<i>.… (modelzoo.encoders.split)

    def __init__(
        self, encoder: HuggingFaceTextEncoder, layers: int, attention_dropout: float | None = None
    ) -> None:
        super().__init__()
        source = _layer_list(encoder)
        total = len(source)
        if not 1 <= layers <= total:
            raise ValueError(
                f"text encoder {encoder.model_id!r} has {total} transformer layers; "
                f"cannot fine-tune the top {layers} (use 1 to {total})"
            )
        self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in source[total - layers :])
        self.total_layers = total
        self.lower_layers = total - layers
        self.dim = encoder.dim
        self.model_id = encoder.model_id
        # Read only for the mask format its layers expect (sdpa, eager, ...); not a module.
        self.config = encoder.model.config
        if attention_dropout is not None:
            set_attention_dropout(self, attention_dropout)
        self.train(encoder.training)

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


def set_attention_dropout(top: TextTop, p: float) -> int:
    """Set the dropout on attention probabilities in the top's layers; returns how many were set.

    Why one would: PyTorch's fused CPU attention (sdpa) has no dropout, so attention dropout in
    training falls back to the unfused path, which made an epoch ~50% slower on MiniLM; the
    dropout on hidden states, which regularises too, costs little and is left alone. Found as
    the `dropout` of any module that owns query/key/value projections; a layout it does not
    know is left unchanged (0 returned).
    """
    count = 0
    for module in top.layers.modules():
        dropout = getattr(module, "dropout", None)
        owns_qkv = any(all(hasattr(module, name) for name in names) for names in _QKV_NAMES)
        if owns_qkv and isinstance(dropout, nn.Dropout):
            dropout.p = p
            count += 1
    return count


def split_text_encoder(
    encoder: HuggingFaceTextEncoder,
    top_layers: int,
    check: bool = True,
    attention_dropout: float | None = None,
) -> tuple[LowerText, TextTop]:
    """The frozen lower L - N layers and a trainable copy of the top N.

    `check` runs a short probe through both halves and compares with the whole encoder, so an
    architecture whose layers need more than (hidden states, mask) fails here, loudly.

    Raises:
        ValueError: no recognisable layer list, N outside 1..L, or a split that does not
            reproduce the encoder.
    """
    if not isinstance(encoder, HuggingFaceTextEncoder):
        raise ValueError(
            f"text encoder {getattr(encoder, 'model_id', type(encoder).__name__)!r} is not a Hugging Face "
            "transformer; only those can have their top layers fine-tuned"
        )
    top = TextTop(encoder, top_layers, attention_dropout)
    lower = LowerText(encoder, top.lower_layers)
    if check:
        _check_split(encoder, lower, top)
    return lower, top


def lower_text(encoder: HuggingFaceTextEncoder, layers: int) -> LowerText:
    """Only the frozen part, for computing (cached) hidden states when the top already exists."""
    return LowerText(encoder, layers)


def top_from_state(encoder: HuggingFaceTextEncoder, state: dict[str, Tensor]) -> TextTop:
    """A fresh top built from the base encoder with `state` loaded, in eval mode."""
    return rebuild_top(TextTop, encoder, state)


# --- helpers ------------------------------------------------------------------------------------


def _truncated(module: nn.Module, path: tuple[str, ...], keep: int) -> nn.Module:
    """A shallow copy of `module` whose layer list (at `path`) holds only its first `keep` layers.

    Only the modules along the path are copied, and only their child tables: every weight
    stays shared with the original, which is left as it was.
    """
    if not path:
        return nn.ModuleList(list(module)[:keep])  # type: ignore[call-overload]
    name, rest = path[0], path[1:]
    clone = copy.copy(module)
    clone._modules = dict(module._modules)  # own child table; the children are still shared
    clone._modules[name] = _truncated(module._modules[name], rest, keep)  # type: ignore[arg-type]
    return clone


def _check_split(encoder: HuggingFaceTextEncoder, lower: LowerText, top: TextTop) -> None:
    tokens = encoder.tokenize(_PROBE, max_length=32)
    was_training = top.training
    top.eval()
    with torch.no_grad():
        device = next(encoder.parameters()).device
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        expected = encoder(ids, mask).float()  # (P, H)
        split = top.to(device)(lower(ids, mask), mask).float()  # (P, H)
    top.train(was_training)
    difference = split_difference(expected, split)
    if not difference <= PROBE_TOLERANCE:
        raise ValueError(
            f"text encoder {encoder.model_id!r} ({type(encoder.model).__name__}): its top layers cannot be "
            f"run apart from the rest (embeddings differ by {difference:.3g}); its layers need more "
            "inputs than hidden states and an attention mask"
        )
