"""Gated multimodal units (GMU, Arevalo et al. 2017) generalised to any number of blocks.

Each block proposes a candidate h_k = tanh(W_k e_k); a gate computed from all blocks at once
decides, per row and per hidden unit, how much of each candidate to keep (softmax over the
blocks). Unlike attention's one weight per block, a gate can take colour from the image and
quality from the text in the same row.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modelzoo.heads.base import ProjectedFusionHead, predict_through
from modelzoo.heads.blocks import HeadOptions, mlp
from modelzoo.registry import register


@register("head", "gated")
class GatedFusion(ProjectedFusionHead):
    """Per-block projection -> tanh candidates, softmax gates over blocks per unit -> MLP."""

    def __init__(self, in_dims: dict[str, int], out_dim: int, cfg: HeadOptions) -> None:
        super().__init__(in_dims, out_dim, cfg)
        n_blocks = len(self.blocks.names)
        self.hidden = cfg.hidden
        self.candidates = nn.ModuleList(nn.Linear(cfg.hidden, cfg.hidden) for _ in range(n_blocks))
        self.gate = nn.Linear(n_blocks * cfg.hidden, n_blocks * cfg.hidden)
        self.mlp = mlp(cfg.hidden, cfg.hidden, out_dim, cfg.dropout)

    def gates(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        """(B, K, H) gate values, summing to 1 over the K blocks for every row and unit."""
        return self._gated(inputs, present)[1]

    def _gated(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        embedded = self.blocks(inputs, present)  # K x (B, H)
        candidates = torch.stack(
            [torch.tanh(layer(e)) for layer, e in zip(self.candidates, embedded, strict=True)], dim=1
        )  # (B, K, H)
        logits = self.gate(torch.cat(embedded, dim=-1))  # (B, K * H)
        gates = torch.softmax(logits.view(-1, len(embedded), self.hidden).float(), dim=1)  # (B, K, H)
        fused = (gates.to(candidates.dtype) * candidates).sum(dim=1)  # (B, H)
        return fused, gates

    def block_weights(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        return self.gates(inputs, present).float().mean(dim=-1)  # (B, K, H) -> (B, K)

    def predict_and_embed(
        self, inputs: dict[str, Tensor], present: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        # inputs[k]: (B, D_k), present[k]: (B,) bool
        fused, _ = self._gated(inputs, present)  # (B, H)
        return predict_through(self.mlp, fused)  # (B, out_dim), (B, H)
