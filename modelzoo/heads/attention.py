"""Modality-level attention: each row weighs its blocks, and the weights can be inspected.

The weights answer "which modality did the model rely on for this row?": `attention_weights`
returns them, one row per example, in `block_names` order. A missing block is not masked
out; it enters as its learned "missing" embedding, so the head can learn how much (usually
little) an absent modality should count, and a row with everything missing still works.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modelzoo.heads.base import ProjectedFusionHead, predict_through
from modelzoo.heads.blocks import HeadOptions, mlp
from modelzoo.registry import register


@register("head", "attention")
class AttentionFusion(ProjectedFusionHead):
    """Per-block projection + block-type embedding -> additive attention over blocks -> MLP."""

    def __init__(self, in_dims: dict[str, int], out_dim: int, cfg: HeadOptions) -> None:
        super().__init__(in_dims, out_dim, cfg)
        n_blocks = len(self.blocks.names)
        # Tells the scorer (and the MLP) which block an embedding came from.
        self.block_type = nn.Parameter(torch.empty(n_blocks, cfg.hidden))
        nn.init.normal_(self.block_type, std=0.02)
        self.score = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.Tanh(), nn.Linear(cfg.hidden, 1))
        self.mlp = mlp(cfg.hidden, cfg.hidden, out_dim, cfg.dropout)

    def _attend(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        embedded = torch.stack(self.blocks(inputs, present), dim=1)  # (B, K, H)
        embedded = embedded + self.block_type.to(embedded.dtype)  # (B, K, H)
        weights = torch.softmax(self.score(embedded).squeeze(-1).float(), dim=1)  # (B, K)
        fused = (weights.to(embedded.dtype).unsqueeze(-1) * embedded).sum(dim=1)  # (B, H)
        return fused, weights

    def attention_weights(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        """(B, K) per-row weights over `block_names`; each row sums to 1."""
        return self._attend(inputs, present)[1]

    def block_weights(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        return self.attention_weights(inputs, present)  # (B, K)

    def predict_and_embed(
        self, inputs: dict[str, Tensor], present: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        # inputs[k]: (B, D_k), present[k]: (B,) bool
        fused, _ = self._attend(inputs, present)  # (B, H)
        return predict_through(self.mlp, fused)  # (B, out_dim), (B, H)
