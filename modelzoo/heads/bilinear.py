"""Low-rank multimodal fusion (LMF, Liu et al. 2018): tensor fusion without the tensor.

Tensor fusion takes the outer product of every block's embedding with a 1 appended, which
holds every unary, pairwise, ... interaction but has prod_k (H + 1) entries. LMF factorises
the weight on that product into `rank` factors per block, so the fused vector is
sum_r prod_k (z_k @ W_k[r]) and costs K * rank * (H + 1) * H parameters.

Each factor starts as "1 + small": the constant row is initialised to one, so at first the
product is about 1 + sum of unary terms + pairwise terms + ... ; training starts from an
additive fusion with small interactions rather than from a product of K random numbers,
which would vanish or explode as the number of blocks grows.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn

from modelzoo.heads.base import ProjectedFusionHead, predict_through
from modelzoo.heads.blocks import HeadOptions, mlp
from modelzoo.registry import register


@register("head", "bilinear")
class BilinearFusion(ProjectedFusionHead):
    """Per-block projection -> rank-R factors per block, multiplied across blocks -> MLP."""

    class Config(HeadOptions):
        """Options beside `head: bilinear`."""

        rank: int = Field(4, ge=1, le=64)

    def __init__(self, in_dims: dict[str, int], out_dim: int, cfg: Config) -> None:
        super().__init__(in_dims, out_dim, cfg)
        n_blocks, hidden = len(self.blocks.names), cfg.hidden
        factors = torch.randn(n_blocks, cfg.rank, hidden + 1, hidden) / math.sqrt(hidden)
        factors[:, :, hidden, :] = 1.0  # the row multiplied by the appended constant 1
        self.factors = nn.Parameter(factors)  # (K, R, H + 1, H)
        self.rank_weights = nn.Parameter(torch.full((cfg.rank,), 1.0 / cfg.rank))
        self.norm = nn.LayerNorm(hidden)
        self.mlp = mlp(hidden, hidden, out_dim, cfg.dropout)

    def predict_and_embed(
        self, inputs: dict[str, Tensor], present: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        # inputs[k]: (B, D_k), present[k]: (B,) bool
        embedded = torch.stack(self.blocks(inputs, present), dim=1)  # (B, K, H)
        ones = embedded.new_ones(embedded.shape[0], embedded.shape[1], 1)  # (B, K, 1)
        with_one = torch.cat([embedded, ones], dim=-1)  # (B, K, H + 1)
        factors = self.factors.to(with_one.dtype)
        per_block = torch.einsum("bki,krih->bkrh", with_one, factors)  # (B, K, R, H)
        product = per_block.prod(dim=1)  # (B, R, H)
        fused = torch.einsum("brh,r->bh", product, self.rank_weights.to(product.dtype))  # (B, H)
        return predict_through(self.mlp, self.norm(fused))  # (B, out_dim), (B, H)
