"""A changed tokenizer is a changed encoder: no cache or bundle may take it for the old one.

The weights alone do not decide the vectors: the same weights fed other token ids give other
features. One MiniLM directory (the packaged one, copied) is extracted through the feature
cache, then its vocabulary is edited in place (two tokens swap ids) and extracted again; the
fingerprint, the feature cache, the fine-tuning hidden-state cache and a bundle's encoder
check must all see the change.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from modelzoo.encoders import loading
from modelzoo.encoders.huggingface import HuggingFaceTextEncoder
from modelzoo.encoders.loading import encoder_fingerprint
from modelzoo.encoders.minilm import packaged_model_dir
from modelzoo.encoders.text_finetune import TextTop
from tasks.cache_keys import text_digest
from tasks.errors import BundleError
from tasks.features.cache import FeatureCache
from tasks.features.extract import EncoderSpec, ExtractStats, encode_chunk, plan_extraction
from tasks.modalities import modality
from tasks.modalities.text import TextEncoderConfig
from tasks.schema import ID, PRESENT
from tasks.serve.predict import check_fingerprint, current_fingerprint
from tasks.train.finetuned_member import fine_tuning
from tasks.train.lower_cache import LowerOutputCache

MAX_LENGTH = 16
SWAPPED = ("dog", "cat")
TEXTS = ["a lovely dog", "the cat sat on the mat", "nothing to see"]


@dataclass
class Run:
    """One extraction of TEXTS: what it did, its vectors (by content slot), and its encoder."""

    stats: ExtractStats
    vectors: np.ndarray  # (len(TEXTS), 384)
    encoder: HuggingFaceTextEncoder
    fingerprint: dict


@dataclass
class Scenario:
    model_dir: Path
    cache: FeatureCache
    spec: EncoderSpec
    before: Run
    after: Run  # the same directory, its vocabulary edited


def copy_minilm(target: Path) -> Path:
    """The packaged MiniLM directory; its 90 MB of weights are linked, not copied."""
    source = packaged_model_dir()
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors"))
    (target / "model.safetensors").symlink_to(source / "model.safetensors")
    return target


def swap_tokens(directory: Path, first: str, second: str) -> None:
    """Swap two tokens' ids in both vocabulary files, as a re-made tokenizer might."""
    tokenizer_json = directory / "tokenizer.json"
    config = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = config["model"]["vocab"]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    tokenizer_json.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    vocab_txt = directory / "vocab.txt"
    lines = vocab_txt.read_text(encoding="utf-8").split("\n")
    i, j = lines.index(first), lines.index(second)
    lines[i], lines[j] = lines[j], lines[i]
    vocab_txt.write_text("\n".join(lines), encoding="utf-8")


def extract(spec: EncoderSpec, cache: FeatureCache) -> Run:
    """TEXTS through the production plan + encode steps, against `cache`."""
    table = pd.DataFrame({ID: [str(i) for i in range(len(TEXTS))], "review": TEXTS, PRESENT + "review": True})
    contents = modality("text").contents(table, ["review"], None, "test table")
    job = plan_extraction(
        spec, contents, len(table), cache, torch.device("cpu"), chunk_rows=8, precision="float32"
    )
    try:
        for index in range(job.chunk_count):
            encode_chunk(job, index)
        assert job.encoder is not None  # loaded: the memo cannot know an edited directory
        return Run(job.stats, np.array(job.slots.vectors), job.encoder, job.fingerprint)
    finally:
        job.close()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    root = tmp_path_factory.mktemp("tokenizer")
    model_dir = copy_minilm(root / "minilm")
    cache = FeatureCache(root / "cache")
    spec = EncoderSpec("text", str(model_dir), MAX_LENGTH, batch_size=8)
    before = extract(spec, cache)
    swap_tokens(model_dir, *SWAPPED)
    after = extract(spec, cache)
    return Scenario(model_dir, cache, spec, before, after)


def test_a_changed_vocabulary_changes_the_fingerprint_though_the_weights_are_the_same(
    scenario: Scenario,
) -> None:
    def ids(encoder: HuggingFaceTextEncoder) -> list[int]:
        return encoder.tokenize(["dog"], MAX_LENGTH)["input_ids"][0].tolist()

    assert ids(scenario.before.encoder) != ids(scenario.after.encoder)  # the edit is what got loaded
    before, after = scenario.before.fingerprint, scenario.after.fingerprint
    assert after["weights_digest"] == before["weights_digest"]
    assert after["model_id"] == before["model_id"]
    assert after["tokenizer_digest"] != before["tokenizer_digest"]
    assert encoder_fingerprint(scenario.after.encoder, max_length=MAX_LENGTH) == after


def test_features_made_with_the_old_tokenizer_are_not_reused(scenario: Scenario) -> None:
    assert scenario.before.stats.computed == len(TEXTS)
    assert (scenario.after.stats.reused, scenario.after.stats.computed) == (0, len(TEXTS))
    # Texts holding a swapped token get other vectors; the others are the same vectors again.
    moved = np.abs(scenario.after.vectors - scenario.before.vectors).max(axis=1)
    assert moved[0] > 0.05 and moved[1] > 0.05 and moved[2] < 1e-5, moved


def test_the_fine_tuning_cache_keeps_old_hidden_states_apart(scenario: Scenario, tmp_path: Path) -> None:
    def cache_of(encoder: HuggingFaceTextEncoder) -> LowerOutputCache:
        tuning = fine_tuning(
            modality("text"), TextEncoderConfig(max_length=MAX_LENGTH, batch_size=8), encoder
        )
        return LowerOutputCache(tmp_path, tuning, TextTop.lower_part(encoder, 2), progress=False)

    old, new = cache_of(scenario.before.encoder), cache_of(scenario.after.encoder)
    assert old.namespace != new.namespace
    text = "a lovely dog"
    key = text_digest(text).hex()
    stale = old.outputs({key: text})[key]
    fresh = new.outputs({key: text})[key]
    assert (new.computed, new.read) == (1, 0)
    assert float((fresh.float() - stale.float()).abs().max()) > 0.1  # what reuse would have cost


def test_a_bundle_trained_with_the_old_tokenizer_is_refused(scenario: Scenario, tmp_path: Path) -> None:
    here = current_fingerprint(scenario.spec, scenario.cache)
    assert here == scenario.after.fingerprint
    with pytest.raises(BundleError, match="tokenizer_digest"):
        check_fingerprint(tmp_path, "text", scenario.before.fingerprint, here)


def test_another_tokenizers_version_changes_the_fingerprint(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = loading._version
    monkeypatch.setattr(loading, "_version", lambda p: "0.0.0-other" if p == "tokenizers" else real(p))
    moved = encoder_fingerprint(scenario.before.encoder, max_length=MAX_LENGTH)
    assert moved["versions"]["tokenizers"] == "0.0.0-other"
    assert moved != scenario.before.fingerprint
