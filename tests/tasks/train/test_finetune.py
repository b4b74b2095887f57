"""Fine-tuning MiniLM's top layers with a fusion head, and the hidden-state cache under it.

A small real set: short synthetic texts in which one word decides the label, a tabular block
of noise, MiniLM from its package, max_length 32.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from modelzoo.encoders.huggingface import HuggingFaceTextEncoder
from modelzoo.encoders.loading import load_text_encoder
from modelzoo.encoders.split import top_state
from modelzoo.encoders.text_finetune import TextTop
from tasks.cache_keys import text_digest
from tasks.config import FusionConfig, TrainConfig
from tasks.data.align import presence
from tasks.modalities import modality
from tasks.modalities.base import FineTuning
from tasks.modalities.text import TextEncoderConfig, TextFinetuneConfig
from tasks.schema import ID, PRESENT
from tasks.scores.metrics import score
from tasks.train.dataset import FeatureSet
from tasks.train.finetune_loop import FineTuned
from tasks.train.finetuned_member import fine_tuning, predict_finetuned, train_finetuned
from tasks.train.lower_cache import LowerOutputCache

ROWS = 120
WORDS = (("awful", "dreadful", "horrible"), ("fine", "okay", "average"), ("wonderful", "superb", "lovely"))
FILLER = ("the", "dog", "sat", "near", "a", "door", "today", "with", "friends", "after", "lunch", "quietly")
BLANK_ROWS = (3, 50, 97)  # one missing, two blank: absent texts
FUSION = FusionConfig(head="concat", hidden=32, dropout=0.0)
TRAIN = TrainConfig(epochs=5, lr=2e-3, patience=3, seed=0, device="cpu")
TEXT = TextEncoderConfig(
    max_length=32, batch_size=32, finetune=TextFinetuneConfig(layers=2, lr=2e-4, epochs=5, batch_size=16)
)


def synthetic(task: str, seed: int = 0) -> tuple[FeatureSet, pd.DataFrame]:
    """Texts whose sentiment word decides the class (binary: negative vs the rest)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, ROWS)
    texts: list[str | None] = []
    for row in range(ROWS):
        words = [*rng.choice(FILLER, 5), rng.choice(WORDS[label[row]])]
        rng.shuffle(words)
        texts.append(" ".join(words))
    texts[BLANK_ROWS[0]], texts[BLANK_ROWS[1]], texts[BLANK_ROWS[2]] = None, "   ", ""
    texts[10] = texts[11]  # a duplicate: one cache entry for two rows
    target = {
        "binary": (label > 0).astype(np.float32),
        "multiclass": label.astype(np.int64),
        "regression": (10.0 + 5.0 * label).astype(np.float32),
    }[task]
    features = FeatureSet(
        ids=np.array([f"r{i}" for i in range(ROWS)]),
        split=np.array(["train"] * 80 + ["val"] * 20 + ["test"] * 20),
        target=target,
        inputs={
            "tabular": rng.normal(size=(ROWS, 3)).astype(np.float32),
            "text.review": np.zeros((ROWS, 384), dtype=np.float32),  # the frozen block, replaced
        },
        present={"tabular": np.ones(ROWS, dtype=bool), "text.review": np.ones(ROWS, dtype=bool)},
        classes=("neg", "mid", "pos") if task == "multiclass" else (),
    )
    return features, rows_of(texts)


def rows_of(texts: list[str | None]) -> pd.DataFrame:
    """Aligned-like rows: the texts and align's presence (a missing or blank text is absent)."""
    column = pd.Series(texts, dtype="string")
    return pd.DataFrame(
        {ID: [f"r{i}" for i in range(len(texts))], "review": column, PRESENT + "review": presence(column)}
    )


def tuning(minilm: HuggingFaceTextEncoder, text: TextEncoderConfig = TEXT) -> FineTuning:
    return fine_tuning(modality("text"), text, minilm)


def digest(text: str) -> str:
    """A text's cache key, as the lower-output cache names its entry."""
    return text_digest(text).hex()


def distinct_texts(rows: pd.DataFrame) -> set[str]:
    return {text for text in rows["review"].dropna() if text.strip()}


def entries(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "hidden").rglob("*.npy"))


def fine_tune(minilm, features, rows, task, cache_dir, text=TEXT, **options) -> FineTuned:
    return train_finetuned(
        tuning(minilm, text),
        features,
        rows,
        ["review"],
        task,
        FUSION,
        TRAIN,
        cache_dir,
        progress=False,
        **options,
    )


def predict(minilm, result, features, rows, task, cache_dir, text=TEXT, top=None) -> np.ndarray:
    return predict_finetuned(
        tuning(minilm, text), result.head, top or result.top, features, rows, ["review"], task,
        result.target_scaling, cache_dir,
    )  # fmt: skip


def cache_of(minilm, directory: Path, lower_layers: int = 4, max_length: int = 32) -> LowerOutputCache:
    text = TEXT.model_copy(update={"max_length": max_length, "batch_size": 8})
    return LowerOutputCache(
        directory, tuning(minilm, text), TextTop.lower_part(minilm, lower_layers), progress=False
    )


@pytest.fixture(scope="module")
def minilm() -> HuggingFaceTextEncoder:
    encoder = load_text_encoder("minilm")
    assert isinstance(encoder, HuggingFaceTextEncoder)
    return encoder


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("finetune-cache")


@pytest.fixture(scope="module")
def first(minilm, cache_dir: Path) -> FineTuned:
    features, rows = synthetic("multiclass")
    return fine_tune(minilm, features, rows, "multiclass", cache_dir)


@pytest.fixture(scope="module")
def mtimes_after_first(first: FineTuned, cache_dir: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in entries(cache_dir)}


@pytest.fixture(scope="module")
def second(first: FineTuned, mtimes_after_first, minilm, cache_dir: Path) -> FineTuned:
    features, rows = synthetic("multiclass")
    return fine_tune(minilm, features, rows, "multiclass", cache_dir)


def test_fine_tuning_lowers_the_validation_loss(first: FineTuned) -> None:
    losses = [epoch["val_loss"] for epoch in first.history]
    assert min(losses) < 0.8 * losses[0], losses
    assert first.history[first.best_epoch - 1]["val_loss"] == min(losses)


def test_fine_tuned_model_classifies_held_out_texts(first: FineTuned, minilm, cache_dir: Path) -> None:
    features, rows = synthetic("multiclass")
    probabilities = predict(minilm, first, features, rows, "multiclass", cache_dir)
    assert probabilities.shape == (ROWS, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    held_out = features.split != "train"
    accuracy = float((probabilities.argmax(axis=1) == features.target)[held_out].mean())
    assert accuracy >= 0.8, accuracy


def test_result_describes_the_fine_tuned_model(first: FineTuned) -> None:
    assert (first.columns, first.depth, first.out_dim) == (("review",), 2, 3)
    assert first.in_dims == {"tabular": 3, "text.review": 384}
    assert len(first.top.layers) == 2 and not first.top.training and not first.head.training
    assert next(first.top.parameters()).device.type == "cpu"


def test_cache_holds_one_entry_per_distinct_non_blank_text(first: FineTuned, cache_dir: Path) -> None:
    _, rows = synthetic("multiclass")
    distinct = distinct_texts(rows)
    assert len(distinct) == ROWS - len(BLANK_ROWS) - 1  # the blanks and one duplicate
    assert first.computed == len(distinct)
    assert sorted(path.stem for path in entries(cache_dir)) == sorted(digest(t) for t in distinct)


def test_cache_entries_hold_only_real_tokens_in_float16(first: FineTuned, minilm, cache_dir: Path) -> None:
    _, rows = synthetic("multiclass")
    sample = next(t for t in rows["review"].dropna() if t.strip())
    path = next(path for path in entries(cache_dir) if path.stem == digest(sample))
    array = np.load(path)
    real_tokens = int(minilm.tokenize([sample], 32)["attention_mask"].sum())
    assert array.dtype == np.float16 and array.shape == (real_tokens, 384)


def test_second_run_reads_the_cache_and_computes_nothing(
    second: FineTuned, mtimes_after_first: dict[Path, int], cache_dir: Path
) -> None:
    assert second.computed == 0
    assert second.read == len(mtimes_after_first)
    assert {path: path.stat().st_mtime_ns for path in entries(cache_dir)} == mtimes_after_first


def test_same_seed_gives_the_same_training(first: FineTuned, second: FineTuned) -> None:
    assert second.history == first.history
    for key, value in top_state(first.top).items():
        assert torch.equal(value, top_state(second.top)[key])


def test_a_leftover_temp_file_is_never_read_as_an_entry(minilm, tmp_path: Path) -> None:
    cache = cache_of(minilm, tmp_path)
    text = "a lovely dog waits by the door"
    entry = cache.path_of(digest(text))
    entry.parent.mkdir(parents=True)
    # A killed writer's temp (this pid, so it is not swept), holding a plausible but wrong array.
    leftover = entry.with_name(f".{entry.name}.{os.getpid()}.dead.tmp")
    with open(leftover, "wb") as handle:
        np.save(handle, np.zeros((5, 384), dtype=np.float16))
    state = cache.outputs({digest(text): text})[digest(text)]
    assert cache.computed == 1 and cache.read == 0
    assert float(state.float().abs().max()) > 0.1  # the real hidden states, not the temp's zeros
    assert np.array_equal(np.load(entry), state.numpy())


def test_a_torn_entry_is_recomputed_not_trusted(minilm, tmp_path: Path) -> None:
    first = cache_of(minilm, tmp_path)
    text = "a superb dog"
    expected = first.outputs({digest(text): text})[digest(text)]
    entry = first.path_of(digest(text))
    entry.write_bytes(entry.read_bytes()[:100])  # as if cut short by a power cut
    again = cache_of(minilm, tmp_path)
    assert torch.equal(again.outputs({digest(text): text})[digest(text)], expected)
    assert again.computed == 1 and np.array_equal(np.load(entry), expected.numpy())


def test_another_split_point_or_max_length_is_another_namespace(minilm, tmp_path: Path) -> None:
    def namespace(lower_layers: int, max_length: int) -> str:
        return cache_of(minilm, tmp_path, lower_layers, max_length).namespace

    assert len({namespace(4, 32), namespace(5, 32), namespace(4, 64)}) == 3
    assert namespace(4, 32) == namespace(4, 32)


@pytest.mark.parametrize(("task", "shape"), [("binary", (ROWS,)), ("regression", (ROWS,))])
def test_predictions_have_the_tasks_shape(task: str, shape: tuple[int, ...], minilm, cache_dir) -> None:
    features, rows = synthetic(task)
    text = TEXT.model_copy(update={"finetune": TextFinetuneConfig(layers=1, epochs=2, batch_size=32)})
    result = fine_tune(minilm, features, rows, task, cache_dir, text)
    prediction = predict(minilm, result, features, rows, task, cache_dir, text)
    assert prediction.shape == shape and np.isfinite(prediction).all()
    if task == "binary":
        assert ((prediction >= 0) & (prediction <= 1)).all()
    else:  # back on the target's own scale (10, 15, 20), not standardised
        assert 8.0 < float(prediction.mean()) < 22.0


def test_a_blank_text_predicts_like_a_missing_one(first: FineTuned, minilm, cache_dir: Path) -> None:
    features, rows = synthetic("multiclass")
    texts = list(rows["review"].astype(object).where(rows["review"].notna(), None))
    blank = rows_of([text if text else "  \n" for text in texts])
    missing = rows_of([text if text and text.strip() else None for text in texts])
    np.testing.assert_array_equal(
        predict(minilm, first, features, blank, "multiclass", cache_dir),
        predict(minilm, first, features, missing, "multiclass", cache_dir),
    )


def test_top_rebuilt_from_its_state_predicts_the_same(first: FineTuned, minilm, cache_dir: Path) -> None:
    features, rows = synthetic("multiclass")
    rebuilt = TextTop.rebuild(minilm, top_state(first.top), 2)
    np.testing.assert_allclose(
        predict(minilm, first, features, rows, "multiclass", cache_dir, top=rebuilt),
        predict(minilm, first, features, rows, "multiclass", cache_dir),
        atol=1e-6,
    )


def test_a_state_of_another_depth_is_refused(first: FineTuned, minilm) -> None:
    with pytest.raises(ValueError, match="holds 2 layers, expected 3"):
        TextTop.rebuild(minilm, top_state(first.top), 3)


def test_texts_must_cover_every_row(minilm, tmp_path: Path) -> None:
    features, rows = synthetic("binary")
    with pytest.raises(ValueError, match="119 texts for 120 rows"):
        fine_tune(minilm, features, rows.iloc[:-1], "binary", tmp_path)


def test_a_chosen_metric_picks_the_fine_tuning_epoch_in_the_rows_own_order(minilm, cache_dir: Path) -> None:
    """The loop predicts val rows shortest text first; the truth it scores them against must follow."""
    features, rows = synthetic("multiclass")
    text = TEXT.model_copy(update={"finetune": TextFinetuneConfig(layers=1, epochs=3, batch_size=32)})
    result = fine_tune(minilm, features, rows, "multiclass", cache_dir, text, metric="log_loss")
    best = max(result.history, key=lambda h: (-h["val_log_loss"], -h["val_loss"]))
    assert result.best_epoch == best["epoch"]
    val = features.split == "val"
    prediction = predict(minilm, result, features, rows, "multiclass", cache_dir, text)[val]
    assert score("multiclass", "log_loss", features.target[val], prediction) == pytest.approx(
        best["val_log_loss"], rel=1e-3
    )


def test_fine_tuning_stops_on_its_own_patience_not_the_heads(minilm, cache_dir: Path) -> None:
    """`encoders.text.finetune.patience` (1 here) ends a run whose val loss stopped improving,
    though `train.patience` (3) would go on: each further epoch costs a pass of the encoder."""
    features, rows = synthetic("multiclass")
    val = features.split == "val"
    target = features.target.copy()
    target[val] = (target[val] + 1) % 3  # val's labels contradict train's: learning makes val worse
    features = dataclasses.replace(features, target=target)
    tuned = TextFinetuneConfig(layers=2, lr=2e-4, epochs=8, batch_size=16, patience=1)
    text = TEXT.model_copy(update={"finetune": tuned})
    result = fine_tune(minilm, features, rows, "multiclass", cache_dir, text)
    losses = [epoch["val_loss"] for epoch in result.history]
    assert len(losses) == result.best_epoch + 1 < TRAIN.patience + result.best_epoch, losses
    assert losses[-1] >= losses[result.best_epoch - 1]  # one epoch past its best, as patience 1 says
