"""What every fusion head is and can do, declared once so the pipeline never has to guess.

Training, evaluation and the report ask a head three things: its prediction, the fused
representation its output layer reads (the embedding plot), and, where it has them, the
weights it gives each input block per row (attention, gates, a late-fusion mixture). A head
answers through these methods; nothing probes attribute names or hooks its layers.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from torch import Tensor, nn

from modelzoo.heads.blocks import BlockProjections, HeadOptions, check_out_dim


class FusionHead(nn.Module):
    """Input blocks (and their presence masks) -> one output per row; see the module docstring."""

    # Heads that read the hashed `*.__wide__` id blocks set this; training gives them only to those.
    consumes_wide_blocks: ClassVar[bool] = False

    @property
    def block_names(self) -> tuple[str, ...]:
        """The dense input blocks, in the order `block_weights` reports them.

        Most heads project their inputs through one `BlockProjections` named `blocks`; a head
        laid out otherwise (transformer, wide_deep) overrides this.
        """
        return self.blocks.names

    @abstractmethod
    def predict_and_embed(
        self, inputs: dict[str, Tensor], present: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """((B, out_dim) outputs, (B, E) fused representation the output layer(s) read)."""

    def forward(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        # inputs[k]: (B, D_k), present[k]: (B,) bool  ->  (B, out_dim)
        return self.predict_and_embed(inputs, present)[0]

    def block_weights(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor | None:
        """(B, K) weight of each block per row, in `block_names` order; None for heads without any."""
        return None


class ProjectedFusionHead(FusionHead):
    """A head that begins, as most do, by projecting every input block to `hidden`.

    Its constructor checks `out_dim` and builds the `blocks` projections first, so every such
    head lays them out (and draws their initial weights) the same way before its own layers.
    A head without options of its own keeps the shared `Config`; one with more subclasses it.
    """

    Config: ClassVar[type[HeadOptions]] = HeadOptions

    def __init__(self, in_dims: dict[str, int], out_dim: int, cfg: HeadOptions) -> None:
        super().__init__()
        check_out_dim(out_dim)
        self.blocks = BlockProjections(in_dims, cfg.hidden, cfg.dropout)


def predict_through(network: nn.Sequential, fused: Tensor) -> tuple[Tensor, Tensor]:
    """(output, the input of the network's last layer): the prediction and the embedding it reads."""
    hidden = network[:-1](fused)  # (B, H)
    return network[-1](hidden), hidden
