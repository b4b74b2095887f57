"""Early fusion: project every block, concatenate, and let one MLP see everything at once.

The simplest head and the baseline the others must beat.
"""

from __future__ import annotations

import torch
from torch import Tensor

from modelzoo.heads.base import ProjectedFusionHead, predict_through
from modelzoo.heads.blocks import HeadOptions, mlp
from modelzoo.registry import register


@register("head", "concat")
class ConcatFusion(ProjectedFusionHead):
    """Per-block projection (missing rows -> learned embedding) -> concat -> MLP -> out_dim."""

    def __init__(self, in_dims: dict[str, int], out_dim: int, cfg: HeadOptions) -> None:
        super().__init__(in_dims, out_dim, cfg)
        self.mlp = mlp(len(self.blocks.names) * cfg.hidden, cfg.hidden, out_dim, cfg.dropout)

    def predict_and_embed(
        self, inputs: dict[str, Tensor], present: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        # inputs[k]: (B, D_k), present[k]: (B,) bool
        embedded = self.blocks(inputs, present)  # K x (B, H), sorted block order
        fused = torch.cat(embedded, dim=-1)  # (B, K * H)
        return predict_through(self.mlp, fused)  # (B, out_dim), (B, H)
