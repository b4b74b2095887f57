"""Wide & Deep: the wide part is a linear model over hashed ids, added to the deep part."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from pydantic import ValidationError

from modelzoo.heads.wide_deep import WideDeep, WideOptions
from tests.threads import torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


BUCKETS = 64
IN_DIMS = {"tabular": 4, "tabular.__wide__": 3, "text.__wide__": 5}


def make() -> WideDeep:
    torch.manual_seed(0)
    cfg = WideDeep.Config(hidden=8, dropout=0.0, wide=WideOptions(buckets=BUCKETS))
    return WideDeep(IN_DIMS, 2, cfg).eval()


def batch(ids: list[list[float]]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    rows = len(ids)
    inputs = {
        "tabular": torch.zeros(rows, 4),
        "tabular.__wide__": torch.zeros(rows, 3),
        "text.__wide__": torch.tensor(ids, dtype=torch.float32),
    }
    return inputs, {k: torch.ones(rows, dtype=torch.bool) for k in inputs}


def test_wide_part_adds_the_learned_weight_of_each_id() -> None:
    head = make()
    with torch.no_grad():
        head.wide.weight[7] = torch.tensor([1.0, 2.0])
        head.wide.weight[9] = torch.tensor([10.0, 20.0])
        inputs, present = batch([[7, 9, 0, 0, 0], [0, 0, 0, 0, 0]])
        out = head(inputs, present)
    torch.testing.assert_close(out[0] - out[1], torch.tensor([11.0, 22.0]))


def test_padding_nan_and_out_of_range_ids_contribute_nothing() -> None:
    head = make()
    with torch.no_grad():
        head.wide.weight.fill_(1.0)
        inputs, present = batch([[0, float("nan"), -3, BUCKETS + 5, 0], [0, 0, 0, 0, 0]])
        out = head(inputs, present)
    torch.testing.assert_close(out[0], out[1])


def test_absent_wide_block_uses_its_learned_missing_logits() -> None:
    head = make()
    with torch.no_grad():
        head.wide.weight.fill_(1.0)
        head.wide_missing[1] = torch.tensor([-4.0, 4.0])  # text.__wide__ is second in sorted order
        inputs, present = batch([[3, 4, 0, 0, 0], [0, 0, 0, 0, 0]])
        present["text.__wide__"][0] = False
        out = head(inputs, present)
    torch.testing.assert_close(out[0] - out[1], torch.tensor([-4.0, 4.0]))


def test_a_cross_needs_two_different_columns() -> None:
    with pytest.raises(ValidationError, match="two different columns"):
        WideOptions(crosses=[["category", "category"]])
