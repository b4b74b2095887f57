"""Transformer fusion: tabular features become tokens, and the token count stays bounded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from pydantic import ValidationError

from modelzoo.heads.transformer import TransformerFusion
from tests.threads import torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


CONFIG = TransformerFusion.Config(hidden=32, token_dim=16, heads=2, layers=1, dropout=0.0)


def test_each_tabular_feature_is_a_token() -> None:
    head = TransformerFusion({"tabular": 5, "text.a": 7}, 1, CONFIG)
    assert head.tabular is not None and head.tabular.per_feature and head.tabular.n_tokens == 5


def test_a_wide_tabular_block_is_capped_at_feature_tokens() -> None:
    head = TransformerFusion({"tabular": 300}, 1, CONFIG.model_copy(update={"feature_tokens": 16}))
    assert head.tabular is not None and head.tabular.n_tokens == 16
    tokens = head.tabular(torch.randn(4, 300), torch.ones(4, dtype=torch.bool))
    assert tokens.shape == (4, 16, 16)


def test_one_tabular_feature_moves_the_output() -> None:
    head = TransformerFusion({"tabular": 5, "text.a": 7}, 1, CONFIG).eval()
    x = {"tabular": torch.zeros(2, 5), "text.a": torch.zeros(2, 7)}
    x["tabular"][1, 3] = 1.0
    present = {k: torch.ones(2, dtype=torch.bool) for k in x}
    with torch.no_grad():
        out = head(x, present)
    assert not torch.allclose(out[0], out[1])


def test_token_dim_must_split_into_the_heads() -> None:
    with pytest.raises(ValidationError, match="divisible"):
        TransformerFusion.Config(token_dim=30, heads=4)
