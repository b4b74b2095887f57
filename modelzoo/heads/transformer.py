"""Transformer fusion: every block, and every tabular feature, is a token; [CLS] reads them all.

Text and image blocks become one token each (their projection plus a block-type embedding).
The `tabular` block is split FT-Transformer style, one token per feature
(token_j = x_j * w_j + b_j), so attention can relate "price" to "image" directly instead of
through a single tabular summary. A very wide tabular block (many one-hot columns) is
mapped to at most `feature_tokens` tokens by one linear layer, keeping attention's
quadratic cost bounded. A row without the tabular block gets learned "missing" tokens.

Tokens are `token_dim` wide (64 by default), narrower than the other heads' `hidden`, which
here sizes the feed-forward layers: attention over ~15 tokens of width 256 costs about 16x
more per row than width 64, and on the demo data bought nothing but CPU time.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from modelzoo.heads.base import FusionHead
from modelzoo.heads.blocks import BlockProjections, HeadOptions, check_blocks, check_out_dim
from modelzoo.registry import register

TABULAR = "tabular"  # the block the feature store writes for all tabular columns together


class FeatureTokens(nn.Module):
    """(B, D) tabular features -> (B, T, H) tokens; T = D, or `max_tokens` when D is larger."""

    def __init__(self, in_dim: int, hidden: int, max_tokens: int) -> None:
        super().__init__()
        self.per_feature = in_dim <= max_tokens
        self.n_tokens = in_dim if self.per_feature else max_tokens
        self.hidden = hidden
        if self.per_feature:
            self.weight = nn.Parameter(torch.randn(in_dim, hidden) / hidden**0.5)  # (D, H)
            self.bias = nn.Parameter(torch.randn(in_dim, hidden) * 0.02)  # (D, H)
        else:
            self.project = nn.Linear(in_dim, self.n_tokens * hidden)
        self.missing = nn.Parameter(torch.randn(self.n_tokens, hidden) * 0.02)  # (T, H)

    def forward(self, x: Tensor, present: Tensor) -> Tensor:
        # x: (B, D), present: (B,) bool
        keep = present.to(torch.bool).view(-1, 1)  # (B, 1)
        x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))  # NaN-safe
        if self.per_feature:
            tokens = x.unsqueeze(-1) * self.weight + self.bias  # (B, D, H)
        else:
            tokens = self.project(x).view(x.shape[0], self.n_tokens, self.hidden)  # (B, T, H)
        missing = self.missing.to(tokens.dtype).expand_as(tokens)  # (B, T, H)
        return torch.where(keep.unsqueeze(-1), tokens, missing)  # (B, T, H)


@register("head", "transformer")
class TransformerFusion(FusionHead):
    """Tokens (blocks + tabular features) + [CLS] -> pre-norm transformer encoder -> [CLS] -> out."""

    class Config(HeadOptions):
        """Options beside `head: transformer`; `hidden` is the feed-forward width."""

        token_dim: int = Field(64, ge=4)
        layers: int = Field(2, ge=1, le=12)
        heads: int = Field(4, ge=1)
        feature_tokens: int = Field(64, ge=0)  # 0: the tabular block is one token like the others

        @model_validator(mode="after")
        def _heads_divide_token_dim(self) -> TransformerFusion.Config:
            if self.token_dim % self.heads:
                raise ValueError(f"token_dim ({self.token_dim}) must be divisible by heads ({self.heads})")
            return self

    def __init__(self, in_dims: dict[str, int], out_dim: int, cfg: Config) -> None:
        super().__init__()
        check_out_dim(out_dim)
        self.names = tuple(sorted(in_dims))
        split_tabular = TABULAR in in_dims and cfg.feature_tokens > 0
        others = {k: d for k, d in in_dims.items() if not (split_tabular and k == TABULAR)}
        width = cfg.token_dim
        self.tabular = FeatureTokens(in_dims[TABULAR], width, cfg.feature_tokens) if split_tabular else None
        self.blocks = BlockProjections(others, width, cfg.dropout) if others else None
        self.block_type = nn.Parameter(torch.randn(len(others), width) * 0.02) if others else None
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)  # (1, 1, H)
        layer = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=cfg.heads,
            dim_feedforward=cfg.hidden,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)

    @property
    def block_names(self) -> tuple[str, ...]:
        return self.names

    def predict_and_embed(
        self, inputs: dict[str, Tensor], present: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        # inputs[k]: (B, D_k), present[k]: (B,) bool
        check_blocks(self.names, inputs, present)
        tokens: list[Tensor] = []
        if self.blocks is not None and self.block_type is not None:
            own = {k: inputs[k] for k in self.blocks.names}
            embedded = torch.stack(self.blocks(own, present), dim=1)  # (B, K', H)
            tokens.append(embedded + self.block_type.to(embedded.dtype))
        if self.tabular is not None:
            tokens.append(self.tabular(inputs[TABULAR], present[TABULAR]))  # (B, T, H)
        sequence = torch.cat(tokens, dim=1)  # (B, K' + T, H)
        cls = self.cls.to(sequence.dtype).expand(sequence.shape[0], -1, -1)  # (B, 1, H)
        encoded = self.encoder(torch.cat([cls, sequence], dim=1))  # (B, 1 + K' + T, H)
        fused = self.norm(encoded[:, 0])  # (B, H): the [CLS] token
        return self.out(fused), fused  # (B, out_dim), (B, H)
