"""Early fusion: project every block, concatenate, and let one MLP see everything at once.

The simplest head and the baseline the others must beat.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from modelzoo.heads.base import FusionHead, predict_through
from modelzoo.heads.blocks import BlockProjections, check_out_dim, mlp
from modelzoo.registry import register


@register("head", "concat")
class ConcatFusion(FusionHead):
    """Per-block projection (missing rows -> learned embedding) -> concat -> MLP -> out_dim."""

    class Config(BaseModel):
        """Options read from params.yaml `fusion:` beside `head: concat`."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        hidden: int = Field(256, ge=1)
        dropout: float = Field(0.1, ge=0.0, lt=1.0)

    def __init__(self, in_dims: dict[str, int], out_dim: int, cfg: Config) -> None:
        super().__init__()
        check_out_dim(out_dim)
        self.blocks = BlockProjections(in_dims, cfg.hidden, cfg.dropout)
        self.mlp = mlp(len(self.blocks.names) * cfg.hidden, cfg.hidden, out_dim, cfg.dropout)

    def predict_and_embed(
        self, inputs: dict[str, Tensor], present: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        # inputs[k]: (B, D_k), present[k]: (B,) bool
        embedded = self.blocks(inputs, present)  # K x (B, H), sorted block order
        fused = torch.cat(embedded, dim=-1)  # (B, K * H)
        return predict_through(self.mlp, fused)  # (B, out_dim), (B, H)
