"""The tfidf text encoder: scikit-learn's analyzer and transform reproduced in torch, stored without pickle.

States are fitted here by scikit-learn itself (TfidfVectorizer + TruncatedSVD, the settings
tasks/features/tfidf.py uses), so each test compares the encoder with the library it replaces.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from modelzoo.encoders.base import RawTextEncoder
from modelzoo.encoders.loading import encoder_fingerprint, fitted_encoder, load_text_encoder
from modelzoo.encoders.tfidf import STATE_JSON, STATE_TENSORS, TfidfSettings, TfidfSvdEncoder
from modelzoo.registry import names

WORDS = [f"w{i}" for i in range(120)] + ["Été", "naïve", "ÇA", "x", "a1", "under_score", "日本語"]
TRICKY = [
    "",
    "x y z",  # single characters only: no token
    "Hello, WORLD! hello-world; hello_world 42 4 2",
    "Été  naïve\tÇA\nça été",
    "日本語 のテキスト ok ok ok ok",
    "w1 w1 w1 w2 w1",  # repeated terms and bigrams: sublinear tf
    "nothing known here zzz",  # no vocabulary term: a zero row
]


def _texts(seed: int, count: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(1, 14))) for _ in range(count)]


@pytest.fixture(scope="module")
def fitted() -> tuple[TfidfVectorizer, TruncatedSVD, TfidfSvdEncoder]:
    """scikit-learn's pipeline on 600 texts, and the torch encoder holding its state."""
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, dtype=np.float32)
    matrix = vectorizer.fit_transform(_texts(0, 600))
    svd = TruncatedSVD(n_components=24, algorithm="randomized", random_state=0).fit(matrix)
    encoder = TfidfSvdEncoder(
        [str(t) for t in vectorizer.get_feature_names_out()],
        torch.from_numpy(vectorizer.idf_.astype(np.float32)),
        torch.from_numpy(svd.components_.astype(np.float32)),
    ).eval()
    return vectorizer, svd, encoder


def _encode(encoder: TfidfSvdEncoder, texts: list[str]) -> np.ndarray:
    with torch.inference_mode():
        return encoder(texts).numpy()


def test_analyzer_is_scikit_learns_default_word_analyzer(fitted: tuple) -> None:
    vectorizer, _, encoder = fitted
    analyze = vectorizer.build_analyzer()
    for text in [*TRICKY, *_texts(5, 50)]:
        assert encoder.analyze(text) == analyze(text), text


def test_output_matches_scikit_learn_transform_on_new_texts(fitted: tuple) -> None:
    vectorizer, svd, encoder = fitted
    texts = [*TRICKY, *_texts(1, 300)]  # not the texts it was fitted on
    expected = svd.transform(vectorizer.transform(texts))
    ours = _encode(encoder, texts)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), 24) == (len(texts), encoder.dim)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def test_a_text_without_known_terms_is_a_zero_vector(fitted: tuple) -> None:
    _, _, encoder = fitted
    assert not _encode(encoder, ["", "zzz qqq"]).any()


def test_batching_does_not_change_a_row(fitted: tuple) -> None:
    _, _, encoder = fitted
    texts = _texts(2, 40)
    whole = _encode(encoder, texts)
    one_by_one = np.concatenate([_encode(encoder, [t]) for t in texts])
    np.testing.assert_allclose(one_by_one, whole, atol=1e-6, rtol=0)


def test_state_round_trips_through_json_and_safetensors_without_pickle(
    fitted: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, encoder = fitted
    for name, data in encoder.to_files().items():
        (tmp_path / name).write_bytes(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_JSON, STATE_TENSORS]
    info = json.loads((tmp_path / STATE_JSON).read_text())
    assert info["vocabulary"] == encoder.vocabulary and info["format_version"] == 1
    with safe_open(str(tmp_path / STATE_TENSORS), framework="pt") as tensors:
        assert set(tensors.keys()) == {"idf", "components"}

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a tfidf state must load without unpickling")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, name, refuse)
    loaded = load_text_encoder(str(tmp_path))  # recognised as a state directory
    texts = [*TRICKY, *_texts(3, 100)]
    assert isinstance(loaded, TfidfSvdEncoder) and not loaded.training
    np.testing.assert_array_equal(_encode(loaded, texts), _encode(encoder, texts))
    assert encoder_fingerprint(loaded, max_length=256) == encoder_fingerprint(encoder, max_length=256)
    assert loaded.to_files() == encoder.to_files()


def test_fingerprint_changes_with_the_vocabulary_alone(fitted: tuple) -> None:
    _, _, encoder = fitted
    renamed = list(encoder.vocabulary)
    renamed[0], renamed[1] = renamed[1], renamed[0]  # same idf and components, other terms per column
    other = TfidfSvdEncoder(renamed, encoder.idf, encoder.components)
    assert encoder_fingerprint(other, max_length=256) != encoder_fingerprint(encoder, max_length=256)


def test_it_is_registered_but_loaded_only_from_a_state() -> None:
    assert "tfidf" in names("text_encoder") and fitted_encoder("text", "tfidf")
    assert not fitted_encoder("text", "minilm")
    assert issubclass(TfidfSvdEncoder, RawTextEncoder)
    with pytest.raises(OSError, match="fitted on the train rows"):
        load_text_encoder("tfidf")


def test_a_state_whose_shapes_disagree_is_refused(fitted: tuple) -> None:
    _, _, encoder = fitted
    files = encoder.to_files()
    info = json.loads(files[STATE_JSON])
    info["vocabulary"] = info["vocabulary"][:-1]
    with pytest.raises(ValueError, match="do not fit a vocabulary"):
        TfidfSvdEncoder.from_files({**files, STATE_JSON: json.dumps(info).encode()})


def test_settings_other_than_the_supported_ones_are_refused() -> None:
    with pytest.raises(ValueError, match="norm"):
        TfidfSettings(norm="l1")
    with pytest.raises(ValueError, match="ngram_range"):
        TfidfSettings(ngram_range=(2, 1))
