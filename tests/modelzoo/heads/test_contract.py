"""Contract tests that every registered fusion head must pass.

Parametrised over the registry, so a new head module gets these tests without editing them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from modelzoo.heads.base import FusionHead
from modelzoo.registry import lookup, names

IN_DIMS = {"tabular": 5, "text.a": 7, "image.p": 3}
BATCH = 6

Inputs = tuple[dict[str, Tensor], dict[str, Tensor]]


def make_head(name: str, out_dim: int) -> nn.Module:
    torch.manual_seed(0)
    head_cls = lookup("head", name)
    assert isinstance(head_cls, type)
    factory: Callable[..., nn.Module] = head_cls
    return factory(IN_DIMS, out_dim, head_cls.Config())


def make_batch(seed: int = 0) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    inputs = {k: torch.randn(BATCH, d, generator=generator) for k, d in IN_DIMS.items()}
    present = {k: torch.ones(BATCH, dtype=torch.bool) for k in IN_DIMS}
    return inputs, present


HEADS = names("head")


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("out_dim", [1, 4], ids=["binary-or-regression", "multiclass-4"])
def test_output_shape(name: str, out_dim: int) -> None:
    head = make_head(name, out_dim).eval()
    inputs, present = make_batch()
    assert head(inputs, present).shape == (BATCH, out_dim)


@pytest.mark.parametrize("name", HEADS)
def test_backward_gives_finite_grads(name: str) -> None:
    head = make_head(name, 3).train()
    inputs, present = make_batch()
    present["text.a"][::2] = False
    head(inputs, present).pow(2).mean().backward()
    grads = [p.grad for p in head.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


@pytest.mark.parametrize("name", HEADS)
def test_absent_block_changes_output_and_stays_finite(name: str) -> None:
    head = make_head(name, 2).eval()
    inputs, present = make_batch()
    absent = {k: v.clone() for k, v in present.items()}
    absent["text.a"][0] = False
    with torch.no_grad():
        with_block = head(inputs, present)[0]
        without_block = head(inputs, absent)[0]
    assert torch.isfinite(without_block).all()
    assert not torch.allclose(with_block, without_block)


@pytest.mark.parametrize("name", HEADS)
def test_absent_values_are_ignored_even_nan(name: str) -> None:
    head = make_head(name, 2).eval()
    inputs, present = make_batch()
    present["image.p"][:3] = False
    garbage = {k: v.clone() for k, v in inputs.items()}
    garbage["image.p"][:3] = float("nan")
    with torch.no_grad():
        clean = head(inputs, present)
        dirty = head(garbage, present)
    assert not torch.isnan(dirty).any()
    torch.testing.assert_close(clean, dirty)


@pytest.mark.parametrize("name", HEADS)
def test_all_blocks_absent_gives_no_nan(name: str) -> None:
    head = make_head(name, 3).eval()
    inputs, present = make_batch()
    nothing = {k: torch.zeros_like(v) for k, v in present.items()}
    with torch.no_grad():
        assert not torch.isnan(head(inputs, nothing)).any()


@pytest.mark.parametrize("name", HEADS)
def test_block_order_does_not_matter(name: str) -> None:
    head = make_head(name, 2).eval()
    inputs, present = make_batch()
    reversed_inputs = dict(reversed(list(inputs.items())))
    with torch.no_grad():
        torch.testing.assert_close(head(inputs, present), head(reversed_inputs, present))


@pytest.mark.parametrize("name", HEADS)
def test_unknown_block_is_rejected_by_name(name: str) -> None:
    head = make_head(name, 1).eval()
    inputs, present = make_batch()
    inputs["text.typo"] = inputs.pop("text.a")
    with pytest.raises(ValueError, match="text.typo"):
        head(inputs, present)


@pytest.mark.parametrize("name", HEADS)
def test_head_declares_its_capabilities_on_the_base_class(name: str) -> None:
    """Prediction, fused embedding and block weights come from FusionHead's methods, nothing else."""
    head = make_head(name, 3).eval()
    assert isinstance(head, FusionHead)
    inputs, present = make_batch()
    with torch.no_grad():
        outputs, fused = head.predict_and_embed(inputs, present)
        assert torch.equal(outputs, head(inputs, present))
        weights = head.block_weights(inputs, present)
    rows = next(iter(inputs.values())).shape[0]
    assert fused.ndim == 2 and fused.shape[0] == rows and torch.isfinite(fused).all()
    assert set(head.block_names) <= set(inputs)
    if weights is not None:
        assert weights.shape == (rows, len(head.block_names))
        assert torch.allclose(weights.sum(dim=1), torch.ones(rows), atol=1e-5)
