"""The text encoder split in two (frozen lower layers, trainable top) on the real MiniLM."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from modelzoo.encoders.huggingface import HuggingFaceTextEncoder
from modelzoo.encoders.loading import load_text_encoder
from modelzoo.encoders.split import load_top_state, top_state
from modelzoo.encoders.text_finetune import TextTop

TEXTS = [
    "short",
    "a noticeably longer sentence about a dog that waits at the shelter door every morning",
    "a middling sentence about cats",
]


@pytest.fixture(scope="module")
def minilm() -> HuggingFaceTextEncoder:
    encoder = load_text_encoder("minilm")
    assert isinstance(encoder, HuggingFaceTextEncoder)
    return encoder


def frozen_embedding(encoder: HuggingFaceTextEncoder, texts: list[str]) -> torch.Tensor:
    tokens = encoder.tokenize(texts, max_length=64)
    with torch.no_grad():
        return encoder(tokens["input_ids"], tokens["attention_mask"])  # (B, H)


def split_embedding(lower: nn.Module, top: TextTop, encoder: HuggingFaceTextEncoder, texts: list[str]):
    tokens = encoder.tokenize(texts, max_length=64)
    with torch.no_grad():
        hidden = lower(tokens["input_ids"], tokens["attention_mask"])  # (B, T, H)
        return top(hidden, tokens["attention_mask"])  # (B, H)


@pytest.mark.parametrize("top_layers", [1, 2, 6])
def test_split_reproduces_the_frozen_encoder_on_a_padded_batch(minilm, top_layers: int) -> None:
    lower, top = TextTop.split(minilm, top_layers)
    assert minilm.tokenize(TEXTS, 64)["attention_mask"].min() == 0  # the batch really is padded
    difference = (split_embedding(lower, top, minilm, TEXTS) - frozen_embedding(minilm, TEXTS)).abs().max()
    assert float(difference) < 1e-5


def test_padding_does_not_change_a_rows_hidden_states_or_embedding(minilm) -> None:
    lower, top = TextTop.split(minilm, 2)
    alone = minilm.tokenize(TEXTS[:1], 64)
    batch = minilm.tokenize(TEXTS, 64)
    real = int(alone["attention_mask"].sum())
    with torch.no_grad():
        hidden_alone = lower(alone["input_ids"], alone["attention_mask"])[0]  # (T, H), no padding
        hidden_batch = lower(batch["input_ids"], batch["attention_mask"])[0, :real]  # (T, H) of a padded row
    assert batch["input_ids"].shape[1] > real
    assert float((hidden_alone - hidden_batch).abs().max()) < 1e-5
    embedded = split_embedding(lower, top, minilm, TEXTS)
    assert float((split_embedding(lower, top, minilm, TEXTS[:1])[0] - embedded[0]).abs().max()) < 1e-5


def test_lower_shares_the_encoders_weights_instead_of_copying_them(minilm) -> None:
    lower, _ = TextTop.split(minilm, 2)
    encoder_weights = {id(p) for p in minilm.parameters()}
    assert all(id(p) in encoder_weights for p in lower.parameters())
    assert len(lower.model.encoder.layer) == 4 and len(minilm.model.encoder.layer) == 6


def test_training_the_top_leaves_the_base_encoder_unchanged(minilm) -> None:
    before = frozen_embedding(minilm, TEXTS)
    lower, top = TextTop.split(minilm, 2)
    top.train()
    optimizer = torch.optim.SGD(top.parameters(), lr=1.0)
    tokens = minilm.tokenize(TEXTS, 64)
    top(lower(tokens["input_ids"], tokens["attention_mask"]), tokens["attention_mask"]).sum().backward()
    optimizer.step()
    assert torch.equal(frozen_embedding(minilm, TEXTS), before)
    assert float((split_embedding(lower, top.eval(), minilm, TEXTS) - before).abs().max()) > 1e-3


def test_too_many_top_layers_is_a_clear_error(minilm) -> None:
    assert TextTop.count(minilm) == 6
    with pytest.raises(ValueError, match="has 6 transformer layers; cannot fine-tune the top 7"):
        TextTop.split(minilm, 7)


def test_zero_top_layers_is_a_clear_error(minilm) -> None:
    with pytest.raises(ValueError, match="cannot fine-tune the top 0"):
        TextTop.split(minilm, 0)


def test_a_model_without_a_layer_list_is_a_clear_error(minilm) -> None:
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = SimpleNamespace(hidden_size=8, max_position_embeddings=16)
            self.blocks = nn.ModuleList([nn.Linear(8, 8)])

    encoder = HuggingFaceTextEncoder(Flat(), minilm.tokenizer, model_id="flat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'flat' \\(Flat\\): no transformer layer list found"):
        TextTop.split(encoder, 1)


def test_state_round_trips_into_a_fresh_top(minilm) -> None:
    lower, top = TextTop.split(minilm, 2)
    with torch.no_grad():
        for parameter in top.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))  # as if trained
    state = top_state(top)
    restored = TextTop.rebuild(minilm, state)
    assert len(restored.layers) == 2
    torch.testing.assert_close(
        split_embedding(lower, restored, minilm, TEXTS), split_embedding(lower, top.eval(), minilm, TEXTS)
    )


def test_loading_a_state_into_a_top_of_another_depth_is_refused(minilm) -> None:
    _, top = TextTop.split(minilm, 2)
    _, deeper = TextTop.split(minilm, 3)
    with pytest.raises(ValueError, match="do not fit 'minilm' with 3 top layers"):
        load_top_state(deeper, top_state(top))


def test_attention_dropout_changes_only_the_tops_attention_probabilities(minilm) -> None:
    _, top = TextTop.split(minilm, 2, attention_dropout=0.0)
    dropouts = {name: module.p for name, module in top.named_modules() if isinstance(module, nn.Dropout)}
    attention = {name: p for name, p in dropouts.items() if name.endswith("attention.self.dropout")}
    assert list(attention.values()) == [0.0, 0.0]
    assert {p for name, p in dropouts.items() if name not in attention} == {0.1}  # hidden dropout stays
    assert minilm.model.encoder.layer[5].attention.self.dropout.p == 0.1  # the base encoder is untouched
