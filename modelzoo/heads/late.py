"""Late fusion: one predictor per input block, their logits averaged with learned weights.

Each block decides on its own, so the head degrades gracefully: a row without its image
still gets the text and tabular predictors' opinions (the image predictor then sees the
learned "missing" embedding and contributes a learned prior). It cannot model interactions
between modalities, which is exactly what makes it a useful reference for the other heads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modelzoo.heads.base import ProjectedFusionHead, predict_through
from modelzoo.heads.blocks import HeadOptions, mlp
from modelzoo.registry import register


@register("head", "late")
class LateFusion(ProjectedFusionHead):
    """Per-block projection -> per-block MLP predictor -> softmax-weighted sum of logits."""

    def __init__(self, in_dims: dict[str, int], out_dim: int, cfg: HeadOptions) -> None:
        super().__init__(in_dims, out_dim, cfg)
        self.predictors = nn.ModuleList(
            mlp(cfg.hidden, cfg.hidden, out_dim, cfg.dropout) for _ in self.blocks.names
        )
        # Equal weights at the start: no block is trusted more before the data says so.
        self.weight_logits = nn.Parameter(torch.zeros(len(self.blocks.names)))

    def mixture(self) -> Tensor:
        """(K,) weights of the blocks' predictions, in `blocks.names` order; they sum to 1."""
        return torch.softmax(self.weight_logits, dim=0)

    def block_weights(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        rows = next(iter(inputs.values())).shape[0]
        return self.mixture().expand(rows, -1)  # (B, K): the same mixture for every row

    def predict_and_embed(
        self, inputs: dict[str, Tensor], present: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        # inputs[k]: (B, D_k), present[k]: (B,) bool
        embedded = self.blocks(inputs, present)  # K x (B, H)
        outputs = [predict_through(predict, e) for predict, e in zip(self.predictors, embedded, strict=True)]
        logits = torch.stack([logit for logit, _ in outputs], dim=1)  # (B, K, out_dim)
        weights = self.mixture().to(logits.dtype).view(1, -1, 1)  # (1, K, 1)
        fused = torch.cat([hidden for _, hidden in outputs], dim=-1)  # (B, K * H): each block's view
        return (logits * weights).sum(dim=1), fused  # (B, out_dim)
