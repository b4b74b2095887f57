"""Gated fusion (GMU): per row and per unit, the gates share one unit of weight among blocks."""

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


def test_gates_sum_to_one_over_blocks_for_every_unit() -> None:
    head = make_head("gated", 2).eval()
    inputs, present = make_batch()
    with torch.no_grad():
        gates = head.gates(inputs, present)
    assert gates.shape == (BATCH, len(IN_DIMS), head.hidden)
    torch.testing.assert_close(gates.sum(dim=1), torch.ones(BATCH, head.hidden))
