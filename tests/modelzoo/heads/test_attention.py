"""Attention fusion: per-row weights over the blocks, exposed for interpretation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.modelzoo.heads.test_contract import BATCH, IN_DIMS, make_batch, make_head
from tests.threads import torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def test_attention_weights_are_one_distribution_per_row() -> None:
    head = make_head("attention", 2).eval()
    inputs, present = make_batch()
    with torch.no_grad():
        weights = head.attention_weights(inputs, present)
    assert weights.shape == (BATCH, len(IN_DIMS))
    assert head.block_names == tuple(sorted(IN_DIMS))
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(BATCH))


def test_a_missing_block_changes_that_rows_weights_only() -> None:
    head = make_head("attention", 2).eval()
    inputs, present = make_batch()
    absent = {k: v.clone() for k, v in present.items()}
    absent["image.p"][0] = False
    with torch.no_grad():
        before = head.attention_weights(inputs, present)
        after = head.attention_weights(inputs, absent)
    assert not torch.allclose(before[0], after[0])
    torch.testing.assert_close(before[1:], after[1:])
