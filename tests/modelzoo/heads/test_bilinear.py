"""Bilinear (LMF) fusion: low-rank factors that can represent a product of two inputs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from modelzoo.heads.bilinear import BilinearFusion
from tests.threads import torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def test_learns_a_pure_interaction_between_two_blocks() -> None:
    # y = a * b: no additive function of a and b alone fits it; the factor product does.
    torch.manual_seed(0)
    head = BilinearFusion({"a": 1, "b": 1}, 1, BilinearFusion.Config(hidden=16, dropout=0.0, rank=2))
    a, b = torch.randn(512, 1), torch.randn(512, 1)
    target = (a * b).squeeze(-1)
    present = {"a": torch.ones(512, dtype=torch.bool), "b": torch.ones(512, dtype=torch.bool)}
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(200):
        loss = (head({"a": a, "b": b}, present).squeeze(-1) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * target.var().item()


def test_rank_sets_the_number_of_factors() -> None:
    head = BilinearFusion({"a": 3, "b": 4, "c": 5}, 2, BilinearFusion.Config(hidden=8, rank=3))
    assert head.factors.shape == (3, 3, 9, 8)  # (blocks, rank, hidden + 1, hidden)
