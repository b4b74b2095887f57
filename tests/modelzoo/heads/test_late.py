"""Late fusion: the output is the weighted mean of per-block predictions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.modelzoo.heads.test_contract import make_batch, make_head
from tests.threads import torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def test_output_is_the_weighted_sum_of_block_predictions() -> None:
    head = make_head("late", 3).eval()
    with torch.no_grad():
        head.weight_logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    inputs, present = make_batch()
    with torch.no_grad():
        embedded = head.blocks(inputs, present)
        weights = head.mixture()
        expected = sum(w * f(e) for w, f, e in zip(weights, head.predictors, embedded, strict=True))
        torch.testing.assert_close(head(inputs, present), expected)
    assert torch.isclose(head.mixture().sum(), torch.tensor(1.0))
