"""What every encoder cut into a frozen lower part and a trainable top shares: fine-tuning only
its last N units (text_finetune: transformer layers; image_finetune: CNN blocks), the lower
part's output per content never changes, so it is cached. A top's state dict keys start with
`<part>.<i>.` for the i-th trained unit, so a saved state says its own depth.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Self, TypeVar

import torch
from torch import Tensor, nn

# float32: a faithful split differs from the whole encoder by ~1e-7; a wrong one by ~1e-1
PROBE_TOLERANCE = 1e-4


def top_state(top: nn.Module) -> dict[str, Tensor]:
    """The top's trainable weights (and buffers) as detached CPU tensors: what a bundle stores."""
    return {key: value.detach().cpu().clone() for key, value in top.state_dict().items()}


def state_depth(state: dict[str, Tensor], part: str) -> int:
    """How many layers or blocks a saved top state holds (its keys are `<part>.<i>.…`).

    Raises:
        ValueError: no key of that form: not a state of this kind of top.
    """
    pattern = re.compile(rf"^{re.escape(part)}\.(\d+)\.")
    indices = {int(match.group(1)) for key in state if (match := pattern.match(key))}
    if not indices:
        raise ValueError(f"not a fine-tuned top state: no `{part}.<i>.` keys")
    return max(indices) + 1


T = TypeVar("T", bound=nn.Module)  # a top: TextTop, ImageTop


def load_top_state(top: T, state: dict[str, Tensor]) -> T:
    """Load `state` into `top`, strictly: a missing or extra key means another model.

    Raises:
        ValueError: the keys or shapes do not match this top.
    """
    part = top.part  # type: ignore[attr-defined]
    try:
        top.load_state_dict(state, strict=True)
    except RuntimeError as err:
        depth = len(getattr(top, part))
        raise ValueError(
            f"fine-tuned weights do not fit {top.model_id!r} with {depth} top {part}: {err}"
        ) from None
    return top


def split_difference(whole: Tensor, split: Tensor) -> float:
    """Largest absolute difference between the whole encoder's output and lower -> top's."""
    with torch.no_grad():
        return float((whole.float() - split.float()).abs().max())


class FrozenLower(nn.Module):
    """What runs before an encoder's first `depth` units, and those units, sharing its weights:
    always in eval mode, without gradients, as what it computes is cached (a pure function)."""

    def __init__(self, depth: int, total: int) -> None:
        super().__init__()
        if not 0 <= depth <= total:
            raise ValueError(f"the lower part's depth must be in [0, {total}], got {depth}")
        self.depth, self.total = depth, total

    def train(self, mode: bool = True) -> FrozenLower:
        return super().train(False)

    run: Callable[..., Tensor]  # the subclass's computation, run here without gradients

    def forward(self, *inputs: Tensor) -> Tensor:
        with torch.no_grad():
            return self.run(*inputs)


class SplitTop(nn.Module):
    """Deep copies of an encoder's last `depth` units (under `part`) and of what follows them
    (`after`), so training them leaves the base encoder and every cached lower output untouched.
    A family of encoders subclasses it with its `lower` class and a `probe`, which `split` runs."""

    part: ClassVar[str]  # the attribute holding the units, and their state keys' prefix
    kind: ClassVar[str]  # "text", "image": in messages
    unit: ClassVar[str]  # how messages count the units: "transformer layers", "blocks"
    where: ClassVar[str]  # "top", "last"
    lower: ClassVar[Callable[[Any, int], FrozenLower]]  # lower(encoder, depth)
    # probe(encoder, lower, top): the whole encoder's embeddings and lower -> top's of one input
    probe: ClassVar[Callable[[Any, FrozenLower, SplitTop], tuple[Tensor, Tensor]]]
    needs: ClassVar[str]  # what a network that fails the probe lacks, in the refusal

    def __init__(
        self, encoder: Any, units: Sequence[nn.Module], depth: int, **after: Sequence[nn.Module]
    ) -> None:
        super().__init__()
        total = len(units)
        if not 1 <= depth <= total:
            raise ValueError(
                f"{self.kind} encoder {encoder.model_id!r} has {total} {self.unit}; cannot fine-tune the "
                f"{self.where} {depth} (1 to {total}, or 0 for a frozen encoder)"
            )
        for name, modules in {self.part: units[total - depth :], **after}.items():
            setattr(self, name, nn.Sequential(*(copy.deepcopy(module) for module in modules)))
        self.total, self.lower_depth = total, total - depth
        self.dim, self.model_id = encoder.dim, encoder.model_id
        self.train(encoder.training)

    @classmethod
    def split(cls, encoder: Any, depth: int, check: bool = True, **options: Any) -> tuple[FrozenLower, Self]:
        """The frozen lower part and a trainable top of the last `depth` units; ValueError for an
        unknown layout, a depth outside 1..units, or (`check`) a split the probe finds unfaithful."""
        top = cls(encoder, depth, **options)
        lower = cls.lower_part(encoder, top.lower_depth)
        if check:
            top._check(encoder, lower)
        return lower, top

    @classmethod
    def lower_part(cls, encoder: Any, depth: int) -> FrozenLower:
        """Only the frozen part, for computing (cached) outputs when the top already exists."""
        return cls.lower(encoder, depth).eval()

    @classmethod
    def count(cls, encoder: Any) -> int:
        """How many units (layers, blocks) the encoder has."""
        return cls.lower_part(encoder, 0).total

    @classmethod
    def rebuild(cls, encoder: Any, state: dict[str, Tensor], expected: int | None = None) -> Self:
        """A fresh top built from the base encoder holding `state`, in eval mode, as deep as the
        state is (`expected`, when given, must agree); ValueError where the state does not fit."""
        held = state_depth(state, cls.part)
        if expected is not None and held != expected:
            raise ValueError(f"fine-tuned state holds {held} {cls.part}, expected {expected}")
        return load_top_state(cls(encoder, held), state).eval()

    def _check(self, encoder: Any, lower: FrozenLower) -> None:
        modes = self.training, encoder.training
        self.eval()
        encoder.eval()
        with torch.no_grad():
            whole, split = self.probe(encoder, lower, self.to(next(encoder.parameters()).device))
        self.train(modes[0])
        encoder.train(modes[1])
        difference = split_difference(whole, split) if whole.shape == split.shape else float("inf")
        if not difference <= PROBE_TOLERANCE:
            raise ValueError(
                f"{self.kind} encoder {encoder.model_id!r} ({type(network_of(encoder)).__name__}): its "
                f"{self.where} {self.part} cannot be run apart from the rest (embeddings differ by "
                f"{difference:.3g}); {self.needs}"
            )


def network_of(encoder: nn.Module) -> nn.Module:
    """The network an encoder wraps (`model` or `backbone`), or the encoder itself."""
    for attribute in ("model", "backbone"):
        network = getattr(encoder, attribute, None)
        if isinstance(network, nn.Module):
            return network
    return encoder
