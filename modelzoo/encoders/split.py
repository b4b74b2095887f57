"""What every encoder cut into a frozen lower part and a trainable top shares.

Text (text_finetune: top transformer layers) and images (image_finetune: last CNN blocks)
store their fine-tuned top the same way: the top's state dict, whose keys start with
`<part>.<i>.` for the i-th trained layer or block, so a saved state says its own depth. A top
class names that part in its class attribute `part` (`layers`, `blocks`), holds it under that
attribute, knows its `model_id`, and is built as `TopClass(encoder, depth)`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

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


def rebuild_top(
    top_cls: Callable[[Any, int], T], encoder: Any, state: dict[str, Tensor], expected: int | None = None
) -> T:
    """A fresh top of `top_cls` built from the base encoder, holding `state`, in eval mode.

    Its depth is the one the state holds; `expected`, when given, must agree.

    Raises:
        ValueError: the state holds another depth than `expected`, or does not fit the encoder.
    """
    part = top_cls.part  # type: ignore[attr-defined]
    held = state_depth(state, part)
    if expected is not None and held != expected:
        raise ValueError(f"fine-tuned state holds {held} {part}, expected {expected}")
    return load_top_state(top_cls(encoder, held), state).eval()


def split_difference(whole: Tensor, split: Tensor) -> float:
    """Largest absolute difference between the whole encoder's output and lower -> top's."""
    with torch.no_grad():
        return float((whole.float() - split.float()).abs().max())
