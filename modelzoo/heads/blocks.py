"""Building blocks shared by the fusion heads.

Every head starts the same way: each input block (`tabular`, `text.title`, `image.photo`, ...)
is projected to a common width, and a row that has no value for a block gets a learned
"missing" embedding. Keeping that here means every head treats absent inputs identically,
so comparing heads compares the fusion, not the missing-value handling.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


class BlockProjection(nn.Module):
    """One input block (B, D) -> (B, H), with a learned embedding for absent rows.

    A silent zero would be indistinguishable from a real all-zero input; the learned
    embedding lets the head tell "missing" apart and learn what missing means for this block.
    """

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        if in_dim < 1 or hidden < 1:
            raise ValueError(f"block dims must be positive, got in_dim={in_dim}, hidden={hidden}")
        self.project = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Dropout(dropout),
        )
        self.missing = nn.Parameter(torch.empty(hidden))
        nn.init.normal_(self.missing, std=0.02)

    def forward(self, x: Tensor, present: Tensor) -> Tensor:
        # x: (B, D) float, present: (B,) bool
        keep = present.to(torch.bool).unsqueeze(-1)  # (B, 1)
        # Absent rows may hold anything (zeros, NaN); zero them before the projection so
        # their values can neither leak into the output nor poison the gradients.
        x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))  # (B, D)
        projected = self.project(x)  # (B, H)
        missing = self.missing.to(projected.dtype).expand_as(projected)  # (B, H)
        return torch.where(keep, projected, missing)  # (B, H)


class BlockProjections(nn.Module):
    """All input blocks, each through its own BlockProjection, in sorted block-name order.

    Sorted order makes the layout of concatenated/stacked features independent of dict
    insertion order, so the same data always builds the same model. Block names contain
    dots, which nn.ModuleDict refuses, hence a ModuleList indexed by `names`.
    """

    def __init__(self, in_dims: dict[str, int], hidden: int, dropout: float) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("a fusion head needs at least one input block")
        self.names: tuple[str, ...] = tuple(sorted(in_dims))
        self.hidden = hidden
        self.projections = nn.ModuleList(
            BlockProjection(in_dims[name], hidden, dropout) for name in self.names
        )

    def forward(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> list[Tensor]:
        # inputs[k]: (B, D_k), present[k]: (B,) bool  ->  K tensors (B, H), in `names` order
        check_blocks(self.names, inputs, present)
        return [
            projection(inputs[name], present[name])
            for name, projection in zip(self.names, self.projections, strict=True)
        ]


def check_blocks(expected: tuple[str, ...], inputs: dict[str, Tensor], present: dict[str, Tensor]) -> None:
    """Fail with the block names when a batch does not match the blocks the head was built for.

    Without this a renamed column shows up as a bare KeyError deep inside forward.
    """
    wanted = set(expected)
    if set(inputs) != wanted:
        raise ValueError(
            f"head expects blocks {sorted(wanted)}; got {sorted(inputs)} "
            f"(missing {sorted(wanted - set(inputs))}, unexpected {sorted(set(inputs) - wanted)})"
        )
    lacking = sorted(wanted - set(present))
    if lacking:
        raise ValueError(f"no presence mask for blocks {lacking}")


def check_out_dim(out_dim: int) -> None:
    """A head with no outputs would build and then fail obscurely in its first loss."""
    if out_dim < 1:
        raise ValueError(f"out_dim must be positive, got {out_dim}")


def mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    """The small two-layer network every head ends with: (B, in_dim) -> (B, out_dim)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, out_dim),
    )


class HeadOptions(BaseModel):
    """Options every head shares; a head's own Config subclasses this and adds its keys.

    Sharing `hidden` and `dropout` lets one params.yaml `fusion:` section serve every head,
    so `dvc exp run -S fusion.head=...` compares heads without editing anything else.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


# Blocks whose name ends with this hold hashed feature ids for a wide (linear) part, not
# dense features: `tabular.__wide__`, `text.__wide__`. The prefix keeps the modality, so
# baselines and modality ablation treat them with the rest of their modality.
WIDE_SUFFIX = ".__wide__"


def is_wide_block(name: str) -> bool:
    """True for hashed-id blocks, which only heads that declare `consumes_wide_blocks` read."""
    return name.endswith(WIDE_SUFFIX)
