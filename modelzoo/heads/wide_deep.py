"""Wide & Deep (Cheng et al. 2016): a linear model on hashed sparse features plus a deep fusion.

The wide part memorises: it is a linear model over hashed feature ids (categorical values,
declared crosses such as category x price bucket, word n-grams of the text), implemented as
an embedding table of width out_dim summed over a row's ids, which is exactly a linear layer
on the multi-hot vector without building it. The deep part generalises: the concat fusion
over the dense blocks (embeddings, tabular features). Their logits are summed.

Wide inputs arrive as blocks named `<modality>.__wide__` holding, per row, up to L feature
ids in 1..buckets stored as float32 (exact below 2**24) with 0 as padding; the pipeline
builds them in `tasks/features/wide.py` from the same `wide` options, so the hash space agrees.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from modelzoo.heads.base import FusionHead, predict_through
from modelzoo.heads.blocks import (
    BlockProjections,
    HeadOptions,
    check_blocks,
    check_out_dim,
    is_wide_block,
    mlp,
)
from modelzoo.registry import register

MAX_BUCKETS = 2**24  # ids are stored in float32, which holds every integer up to 2**24


class WideOptions(BaseModel):
    """`fusion.wide`: what the wide part sees (read by tasks/features/wide.py) and its hash space."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crosses: list[list[str]] = []  # each a list of >= 2 categorical/numeric columns
    buckets: int = Field(2**15, ge=16, le=MAX_BUCKETS)  # hash space shared by every wide feature
    ngrams: int = Field(2, ge=0, le=4)  # word n-grams of text columns up to this length; 0: none
    max_ngrams: int = Field(256, ge=1)  # per row, over all text columns
    numeric_bins: int = Field(10, ge=2, le=1000)  # quantile buckets of numeric columns (train rows)

    @field_validator("crosses")
    @classmethod
    def _crosses_have_two_columns(cls, crosses: list[list[str]]) -> list[list[str]]:
        for index, cross in enumerate(crosses):
            if len(cross) < 2 or len(set(cross)) != len(cross):
                raise ValueError(f"cross {index} must name at least two different columns, got {cross}")
        return crosses


@register("head", "wide_deep")
class WideDeep(FusionHead):
    """Deep: concat fusion of dense blocks. Wide: sum of learned weights of each row's hashed ids."""

    consumes_wide_blocks: ClassVar[bool] = True  # training keeps `*.__wide__` blocks for this head

    class Config(HeadOptions):
        """Options beside `head: wide_deep`."""

        wide: WideOptions = WideOptions()

    def __init__(self, in_dims: dict[str, int], out_dim: int, cfg: Config) -> None:
        super().__init__()
        check_out_dim(out_dim)
        self.names = tuple(sorted(in_dims))
        self.wide_names = tuple(name for name in self.names if is_wide_block(name))
        deep_dims = {name: in_dims[name] for name in self.names if not is_wide_block(name)}
        self.deep = BlockProjections(deep_dims, cfg.hidden, cfg.dropout)
        self.deep_mlp = mlp(len(self.deep.names) * cfg.hidden, cfg.hidden, out_dim, cfg.dropout)
        self.buckets = cfg.wide.buckets
        self.wide: nn.Embedding | None = None
        self.wide_missing: nn.Parameter | None = None
        if self.wide_names:
            # Zero start: the wide part begins as "no opinion" and learns only what helps.
            self.wide = nn.Embedding(self.buckets + 1, out_dim, padding_idx=0)
            nn.init.zeros_(self.wide.weight)
            self.wide_missing = nn.Parameter(torch.zeros(len(self.wide_names), out_dim))  # (W, out)

    @property
    def block_names(self) -> tuple[str, ...]:
        return self.deep.names

    def predict_and_embed(
        self, inputs: dict[str, Tensor], present: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        # inputs[k]: (B, D_k) (wide blocks: (B, L) ids as floats), present[k]: (B,) bool
        check_blocks(self.names, inputs, present)
        deep_inputs = {name: inputs[name] for name in self.deep.names}
        deep, fused = predict_through(self.deep_mlp, torch.cat(self.deep(deep_inputs, present), dim=-1))
        if self.wide is None or self.wide_missing is None:
            return deep, fused
        logits = deep
        for index, name in enumerate(self.wide_names):
            keep = present[name].to(torch.bool).unsqueeze(-1)  # (B, 1)
            ids = self._ids(inputs[name], keep)  # (B, L) int64 in [0, buckets]
            used = (ids > 0).unsqueeze(-1).to(self.wide.weight.dtype)  # (B, L, 1): padding adds nothing
            wide = (self.wide(ids) * used).sum(dim=1).to(deep.dtype)  # (B, out)
            missing = self.wide_missing[index].to(deep.dtype).expand_as(wide)  # (B, out)
            logits = logits + torch.where(keep, wide, missing)
        return logits, fused  # (B, out), (B, H): the wide part is a sum of weights, not a representation

    def _ids(self, values: Tensor, keep: Tensor) -> Tensor:
        """Stored float ids -> int64; absent rows, NaN and out-of-range values become padding."""
        values = torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))
        values = torch.nan_to_num(values.float(), nan=0.0, posinf=0.0, neginf=0.0)  # (B, L)
        ids = values.round().long()  # (B, L)
        valid = (ids >= 1) & (ids <= self.buckets)
        return torch.where(valid, ids, torch.zeros_like(ids))  # (B, L)
