"""`encoders.text.model: tfidf`: fitted on train rows only, cached like any encoder, chunked for speed.

Real components throughout: align makes the aligned table from a planted frame, scikit-learn
fits, extraction goes through the real row-level cache and writes real feature files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from modelzoo.encoders.tfidf import STATE_JSON, STATE_TENSORS, TfidfSvdEncoder
from tasks.config import Params, params_from_dict
from tasks.data.align import ID, SPLIT, align
from tasks.errors import ConfigError, DataError
from tasks.features.cache import FeatureCache
from tasks.features.extract import extract_embeddings
from tasks.features.feature_store import read_blocks
from tasks.features.fitted import NOTE, FittedState, prepare_state, publish_state, state_digests
from tasks.features.tfidf import fit_tfidf, train_texts
from tasks.train.plan import finetuned_kind, member_plan

ROWS = 160
HELD_OUT_WORD = "heldoutonly"  # planted in val and test texts only


def _raw(tfidf: dict | None = None, **text: object) -> dict:
    return {
        "data": {
            "sources": [{"path": "items.csv"}],
            "id": "item_id",
            "target": "label",
            "task": "binary",
            "columns": {"categorical": [], "numeric": ["signal"], "text": ["note"], "image": []},
            "image_root": "images",
            "audio_root": "audio",
            "demo": None,
        },
        "encoders": {"text": {"model": "tfidf", "tfidf": {"dim": 16, "min_df": 1, **(tfidf or {})}, **text}},
        "fusion": {"head": "concat", "hidden": 16, "dropout": 0.0},
        "train": {"epochs": 3, "batch_size": 64, "seed": 0, "device": "cpu"},
    }


def _params(cache: Path, **tfidf: object) -> Params:
    raw = _raw(tfidf)
    raw["cache"] = {"dir": str(cache), "chunk_rows": 16}
    return params_from_dict(raw)


def _frame(seed: int = 0) -> pd.DataFrame:
    """Notes whose words follow the label (`good ...` / `poor ...`), plus filler words."""
    rng = np.random.default_rng(seed)
    label = rng.choice(["yes", "no"], ROWS)
    filler = [f"word{i}" for i in range(40)]
    notes = [
        " ".join([("good" if y == "yes" else "poor"), *rng.choice(filler, rng.integers(2, 8))]) for y in label
    ]
    frame = pd.DataFrame(
        {
            "item_id": [f"i{i:04d}" for i in range(ROWS)],
            "label": label,
            "signal": rng.normal(size=ROWS),
            "note": notes,
        }
    )
    for column in ("item_id", "label", "note"):
        frame[column] = frame[column].astype("string")
    return frame


@pytest.fixture(scope="module")
def aligned() -> pd.DataFrame:
    """The aligned table, with the held-out word planted in every val and test note."""
    table, _ = align(params_from_dict(_raw()).data, [("items.csv", _frame())])
    held_out = table[SPLIT] != "train"
    table.loc[held_out, "note"] = table.loc[held_out, "note"] + f" {HELD_OUT_WORD}"
    return table


def _state_bytes(state: FittedState) -> dict[str, bytes]:
    return {name: (state.directory / name).read_bytes() for name in (STATE_JSON, STATE_TENSORS)}


def _text_vectors(path: Path) -> pd.DataFrame:
    ids, blocks, _, _ = read_blocks(path)
    return pd.DataFrame(list(blocks["text.note"]), index=ids)


# --- fit on train rows only ---------------------------------------------------------------------


def test_a_word_only_in_val_and_test_rows_is_not_in_the_vocabulary(
    aligned: pd.DataFrame, tmp_path: Path
) -> None:
    state = prepare_state(_params(tmp_path), "text", aligned, tmp_path)
    vocabulary = TfidfSvdEncoder.from_directory(state.directory).vocabulary
    assert "good" in vocabulary and "word3" in vocabulary  # min_df 1: every train word is in
    assert not [term for term in vocabulary if HELD_OUT_WORD in term]
    assert sum((aligned[SPLIT] != "train") & aligned["note"].str.contains(HELD_OUT_WORD)) > 20


def test_changing_val_and_test_texts_leaves_the_state_and_train_vectors_byte_identical(
    aligned: pd.DataFrame, tmp_path: Path
) -> None:
    """Two fits from scratch (separate caches), the second with every held-out note rewritten."""
    rewritten = aligned.copy()
    held_out = rewritten[SPLIT] != "train"
    rewritten.loc[held_out, "note"] = [f"entirely new words {i} here" for i in range(int(held_out.sum()))]
    runs = {}
    for name, table in (("before", aligned), ("after", rewritten)):
        cache = tmp_path / name / "cache"
        stats = extract_embeddings(
            _params(cache), "text", table, FeatureCache(cache), tmp_path / name / "text.parquet"
        )
        assert stats.fit == "fitted"  # not found in a shared cache: really fitted twice
        states = list((cache / "fitted").iterdir())
        runs[name] = (states, _text_vectors(tmp_path / name / "text.parquet"))
    (before,), before_vectors = runs["before"]
    (after,), after_vectors = runs["after"]
    assert before.name == after.name  # same fit key
    assert state_digests(before) == state_digests(after) and state_digests(before)
    train_ids = aligned.loc[aligned[SPLIT] == "train", ID].astype(str)
    assert (
        before_vectors.loc[train_ids].to_numpy().tobytes()
        == after_vectors.loc[train_ids].to_numpy().tobytes()
    )


def test_changing_one_train_text_changes_the_state(aligned: pd.DataFrame, tmp_path: Path) -> None:
    changed = aligned.copy()
    first_train = changed.index[changed[SPLIT] == "train"][0]
    changed.loc[first_train, "note"] = "good brandnewword"
    params = _params(tmp_path)
    states = [
        prepare_state(params, "text", table, tmp_path / name)
        for name, table in (("a", aligned), ("b", changed))
    ]
    assert states[0].key != states[1].key
    assert _state_bytes(states[0])[STATE_JSON] != _state_bytes(states[1])[STATE_JSON]
    assert "brandnewword" in TfidfSvdEncoder.from_directory(states[1].directory).vocabulary


def test_train_texts_are_the_distinct_train_notes_sorted(aligned: pd.DataFrame) -> None:
    texts = train_texts(aligned, ["note"])
    assert texts == sorted(set(aligned.loc[aligned[SPLIT] == "train", "note"]))
    assert not any(HELD_OUT_WORD in text for text in texts)


# --- cached like any encoder --------------------------------------------------------------------


def test_a_second_extraction_reuses_the_fit_and_encodes_nothing(
    aligned: pd.DataFrame, tmp_path: Path
) -> None:
    params, cache = _params(tmp_path / "cache"), FeatureCache(tmp_path / "cache")
    first = extract_embeddings(params, "text", aligned, cache, tmp_path / "first.parquet")
    second = extract_embeddings(params, "text", aligned, cache, tmp_path / "second.parquet")
    assert (first.fit, first.computed, first.unique) == ("fitted", first.unique, len(set(aligned["note"])))
    assert (second.fit, second.computed, second.reused, second.encoder_loaded) == (
        "reused",
        0,
        first.unique,
        False,
    )
    assert len(list((tmp_path / "cache" / "fitted").iterdir())) == 1
    np.testing.assert_array_equal(
        _text_vectors(tmp_path / "first.parquet"), _text_vectors(tmp_path / "second.parquet")
    )


def test_a_refit_on_other_train_texts_lands_in_a_new_cache_namespace(
    aligned: pd.DataFrame, tmp_path: Path
) -> None:
    params, cache = _params(tmp_path / "cache"), FeatureCache(tmp_path / "cache")
    extract_embeddings(params, "text", aligned, cache, tmp_path / "first.parquet")
    changed = aligned.copy()
    changed.loc[changed.index[changed[SPLIT] == "train"][0], "note"] = "good anotherword"
    refit = extract_embeddings(params, "text", changed, cache, tmp_path / "refit.parquet")
    # every text is encoded again, even the unchanged ones: their old vectors came from another state
    assert (refit.fit, refit.reused, refit.computed) == ("fitted", 0, refit.unique)
    fingerprints = [read_blocks(tmp_path / f"{n}.parquet")[3]["encoder"] for n in ("first", "refit")]
    assert fingerprints[0]["weights_digest"] != fingerprints[1]["weights_digest"]


def test_the_feature_file_records_the_state_and_float32(aligned: pd.DataFrame, tmp_path: Path) -> None:
    params, cache = _params(tmp_path / "cache"), FeatureCache(tmp_path / "cache")
    extract_embeddings(params, "text", aligned, cache, tmp_path / "text.parquet")
    metadata = read_blocks(tmp_path / "text.parquet")[3]
    (state,) = (tmp_path / "cache" / "fitted").iterdir()
    assert metadata["state"] == {"files": state_digests(state)}
    assert metadata["precision"] == "float32" and metadata["encoder"]["model_id"] == "tfidf"
    assert metadata["encoder"]["dim"] == 16


def test_a_cheap_encoder_takes_one_chunk_where_chunk_rows_would_cut_many(
    aligned: pd.DataFrame, tmp_path: Path
) -> None:
    stats = extract_embeddings(
        _params(tmp_path), "text", aligned, FeatureCache(tmp_path), tmp_path / "t.parquet"
    )
    assert stats.unique > 16 and stats.chunks == 1  # cache.chunk_rows is 16 here


def test_a_damaged_cached_state_is_fitted_again(aligned: pd.DataFrame, tmp_path: Path) -> None:
    params = _params(tmp_path)
    state = prepare_state(params, "text", aligned, tmp_path)
    (state.directory / STATE_TENSORS).write_bytes(b"not safetensors")
    again = prepare_state(params, "text", aligned, tmp_path)
    assert not again.reused and state_digests(again.directory) != {}
    TfidfSvdEncoder.from_directory(again.directory)  # loads


# --- the out --------------------------------------------------------------------------------------


def test_the_out_holds_a_copy_of_the_state_or_a_note(aligned: pd.DataFrame, tmp_path: Path) -> None:
    state = prepare_state(_params(tmp_path), "text", aligned, tmp_path / "cache")
    published = publish_state(state, tmp_path / "text.fitted", "text")
    assert published is not None and published.directory == (tmp_path / "text.fitted").resolve()
    assert state_digests(tmp_path / "text.fitted") == state_digests(state.directory)
    assert publish_state(None, tmp_path / "image.fitted", "image") is None
    assert json.loads((tmp_path / "image.fitted" / NOTE).read_text())["fitted"] is None


# --- what the data allows -------------------------------------------------------------------------


def test_dim_is_clipped_to_what_a_small_vocabulary_allows(tmp_path: Path) -> None:
    from tasks.modalities.text import TfidfConfig

    encoder = fit_tfidf(["red apple", "green apple", "red pear"], TfidfConfig(dim=64, min_df=1))
    assert encoder.dim == 3 and encoder.notes["dim_asked"] == 64  # 3 texts bound the rank


def test_train_texts_without_a_vocabulary_are_a_data_error(tmp_path: Path) -> None:
    from tasks.modalities.text import TfidfConfig

    with pytest.raises(DataError, match="encoders.text.tfidf"):
        fit_tfidf(["a b", "c d e"], TfidfConfig())


def test_fine_tuning_a_tfidf_encoder_is_refused_and_best_does_not_try() -> None:
    with pytest.raises(ConfigError, match="no layers to fine-tune"):
        params_from_dict(_raw(finetune={"layers": 2}))
    raw = _raw()
    raw["train"]["preset"] = "best"
    assert finetuned_kind("text") not in [
        m.name for m in member_plan(params_from_dict(raw), ["tabular", "text"])
    ]


def test_chunks_encoded_as_a_cluster_worker_would_are_found_by_the_local_plan(
    aligned: pd.DataFrame, tmp_path: Path
) -> None:
    """Workers load the state by its path and encode in float32, the namespace the local plan reads."""
    from tasks.features.encode_chunks import chunk_payloads, encode_payload
    from tasks.features.extract import plan_modality

    params, cache = _params(tmp_path / "cache"), FeatureCache(tmp_path / "cache")
    job = plan_modality(params, "text", aligned, cache)
    try:
        spec, payloads = job.spec, chunk_payloads(job)
    finally:
        job.close()
    assert sum(encode_payload(spec, p, str(tmp_path / "cache"), "cpu") for p in payloads) == job.stats.unique
    again = plan_modality(params, "text", aligned, cache)
    try:
        assert (again.stats.reused, len(again.misses), again.precision) == (job.stats.unique, 0, "float32")
    finally:
        again.close()


def test_cache_dtype_float16_stores_the_same_vectors_rounded(aligned: pd.DataFrame, tmp_path: Path) -> None:
    """cache.dtype: float16 halves the vectors' bytes; the cache stays float32, so nothing is re-encoded."""
    full = _params(tmp_path / "cache")
    half = full.model_copy(update={"cache": full.cache.model_copy(update={"dtype": "float16"})})
    cache = FeatureCache(tmp_path / "cache")
    extract_embeddings(full, "text", aligned, cache, tmp_path / "full.parquet")
    stats = extract_embeddings(half, "text", aligned, cache, tmp_path / "half.parquet")
    assert stats.computed == 0  # the float32 cache served every vector
    schema = pq.read_schema(tmp_path / "half.parquet")
    assert str(schema.field("text.note").type.value_type) == "halffloat"
    (_, full_blocks, _, _), (_, half_blocks, _, metadata) = (
        read_blocks(tmp_path / f"{name}.parquet") for name in ("full", "half")
    )
    assert metadata["dtype"] == "float16"
    expected = full_blocks["text.note"].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(half_blocks["text.note"], expected)
