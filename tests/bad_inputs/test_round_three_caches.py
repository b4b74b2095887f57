"""Round three of hostile input (issue 23), class 6: damaged cache files are rebuilt, never used.

Every file a stage reads back from the cache directory is a memo of something it can
recompute, so damage to one (zeroed in place, one bit flipped, cut short, a record that no
longer parses) must cost time and a warning naming the file, never a crash and never wrong
numbers. Each test makes the cache through the production path, damages one file on disk,
runs the reading path again and compares with what the source gives:

- the memory-mapped copies of feature files that train and evaluate read (`cache.dir/mapped`);
- the fine-tuning cache of a frozen lower part's outputs (`cache.dir/hidden`);
- the remembered encoder fingerprints and the embedding shards that extract reads.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelzoo.encoders.text_finetune import TextTop
from tasks.cache_keys import text_digest
from tasks.features.feature_store import read_blocks, write_blocks
from tasks.modalities import modality
from tasks.modalities.text import TextEncoderConfig
from tasks.paths import Layout
from tasks.schema import ID, SPLIT, TARGET
from tasks.train.assemble import load_feature_set
from tasks.train.finetuned_member import fine_tuning
from tasks.train.lower_cache import LowerOutputCache
from tests.bad_inputs.pipeline import Encoders, run_pipeline
from tests.bad_inputs.project import Project

ROWS = 64
Damage = Callable[[Path], None]


def _npy_data_start(data: bytes) -> int:
    """Where an .npy file's array bytes begin (after its magic, header length and header)."""
    if data[6:8] == b"\x01\x00":
        return 10 + int.from_bytes(data[8:10], "little")
    return 12 + int.from_bytes(data[8:12], "little")


def zero_data(path: Path) -> None:
    """Zero the array bytes of an .npy file in place: still a valid file, of the same size."""
    data = bytearray(path.read_bytes())
    start = _npy_data_start(bytes(data))
    data[start:] = bytes(len(data) - start)
    path.write_bytes(bytes(data))


def zero_whole(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def flip_bit(path: Path) -> None:
    """Flip the lowest bit of a byte near the end: a float stays finite and plausible."""
    data = bytearray(path.read_bytes())
    data[len(data) - 100] ^= 1
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete(path: Path) -> None:
    path.unlink()


def scribble_json(path: Path) -> None:
    """A record that still parses, but says something else."""
    path.write_text("[]")


# --- the memory-mapped copies train and evaluate read ---------------------------------------


def write_features(root: Path) -> Layout:
    """An aligned table and a text feature file (some cells absent) under `root`."""
    rng = np.random.default_rng(0)
    layout = Layout(root)
    ids = np.array([f"r{i:03d}" for i in range(ROWS)], dtype=object)
    split = np.array(["train", "val", "test"])[np.arange(ROWS) % 3]
    layout.aligned.parent.mkdir(parents=True)
    frame = pd.DataFrame({ID: ids, SPLIT: split, TARGET: (np.arange(ROWS) % 2).astype(str)})
    frame.to_parquet(layout.aligned)
    layout.features.mkdir(parents=True)
    text = rng.normal(size=(ROWS, 24)).astype(np.float32)
    present = rng.random(ROWS) > 0.2
    write_blocks(layout.feature_file("text"), ids, {"text.title": text}, {"text.title": present}, {})
    return layout


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return write_features(tmp_path / "project")


def copy_file(mapped: Path, name: str) -> Path:
    (directory,) = [d for d in mapped.iterdir() if not d.name.startswith(".")]
    return directory / name


def assert_matches_source(layout: Layout, mapped: Path) -> None:
    """What train reads equals the feature file, and still comes from a memory-mapped copy."""
    _, blocks, present, _ = read_blocks(layout.feature_file("text"))
    features = load_feature_set(layout, "binary", mapped=mapped)
    assert isinstance(features.inputs["text.title"], np.memmap)
    np.testing.assert_array_equal(features.inputs["text.title"], blocks["text.title"])
    np.testing.assert_array_equal(features.present["text.title"], present["text.title"])


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("text.title.npy", zero_data),
        ("text.title.npy", zero_whole),
        ("text.title.npy", flip_bit),
        ("text.title.npy", truncate),
        ("text.title.npy", delete),
        ("present__text.title.npy", zero_data),
        ("blocks.json", scribble_json),
        ("blocks.json", zero_whole),
    ],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_a_damaged_mapped_copy_is_decoded_again_not_used(
    layout: Layout, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, damage: Damage
) -> None:
    mapped = tmp_path / "mapped"
    load_feature_set(layout, "binary", mapped=mapped)  # train makes the copy
    damaged = copy_file(mapped, name)
    damage(damaged)
    with caplog.at_level(logging.WARNING, logger="tasks.features.mapped"):
        assert_matches_source(layout, mapped)
    assert str(damaged) in caplog.text  # the warning names the damaged file
    assert copy_file(mapped, name).is_file()  # and the copy was made again, not read into memory


def test_a_sound_mapped_copy_is_reused_as_it_is(
    layout: Layout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mapped = tmp_path / "mapped"
    load_feature_set(layout, "binary", mapped=mapped)
    written = copy_file(mapped, "text.title.npy").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING):
        assert_matches_source(layout, mapped)
    assert copy_file(mapped, "text.title.npy").stat().st_mtime_ns == written
    assert not caplog.records


# --- the fine-tuning cache of lower-layer outputs ---------------------------------------------


@pytest.mark.parametrize("damage", [flip_bit, zero_whole, truncate], ids=lambda f: f.__name__)
def test_a_damaged_hidden_state_is_recomputed_not_used(
    encoders: Encoders, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Damage
) -> None:
    lower = TextTop.lower_part(encoders.text, 2)
    tuning = fine_tuning(modality("text"), TextEncoderConfig(max_length=32, batch_size=8), encoders.text)
    text = "a tall blue cup with a chipped handle"
    key = text_digest(text).hex()

    def cache() -> LowerOutputCache:
        return LowerOutputCache(tmp_path, tuning, lower, progress=False)

    expected = cache().outputs({key: text})[key]
    entry = cache().path_of(key)
    damage(entry)
    again = cache()
    with caplog.at_level(logging.WARNING, logger="tasks.train.lower_cache"):
        state = again.outputs({key: text})[key]
    assert (again.computed, again.read) == (1, 0)
    assert np.array_equal(state.numpy(), expected.numpy())
    assert str(entry) in caplog.text


# --- what extract reads back: fingerprints remembered, embedding shards -------------------------


Warm = tuple[Path, Path, dict]  # a project run once, its own cache, its text feature blocks


@pytest.fixture(scope="module")
def warm(encoders: Encoders, tmp_path_factory: pytest.TempPathFactory) -> Warm:
    """A project run once with a cache of its own: (project, cache, the text feature file's blocks)."""
    base = tmp_path_factory.mktemp("round-three-warm")
    project = Project(base / "project").write()
    cache = base / "cache"
    run_pipeline(project, Encoders(encoders.text, encoders.image, cache))
    return project, cache, read_blocks(Layout(project).feature_file("text"))[1]


def rerun_with(
    warm: Warm, encoders: Encoders, tmp_path: Path, damage: Callable[[Path], Path]
) -> tuple[Path, dict]:
    """Copy the warm project and cache, damage one cache file, run again: (damaged file, blocks)."""
    project, cache, _ = warm
    shutil.copytree(project, tmp_path / "project")
    shutil.copytree(cache, tmp_path / "cache")
    damaged = damage(tmp_path / "cache")
    run_pipeline(tmp_path / "project", Encoders(encoders.text, encoders.image, tmp_path / "cache"))
    return damaged, read_blocks(Layout(tmp_path / "project").feature_file("text"))[1]


def misname_dim(cache: Path) -> Path:
    """One byte changed in every remembered fingerprint: still JSON, but `dim` is gone."""
    memos = sorted((cache / "fingerprints").glob("*.json"))
    assert memos
    for memo in memos:
        memo.write_bytes(memo.read_bytes().replace(b'"dim"', b'"dam"'))
    return memos[0]


def flip_a_shard(cache: Path) -> Path:
    (shard, *_) = sorted(cache.glob("*/shards/*.parquet"))
    flip_bit(shard)
    return shard


@pytest.mark.parametrize("damage", [misname_dim, flip_a_shard], ids=lambda f: f.__name__)
def test_a_damaged_extract_cache_file_is_recomputed_not_used(
    warm: Warm,
    encoders: Encoders,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], Path],
) -> None:
    with caplog.at_level(logging.WARNING):
        damaged, blocks = rerun_with(warm, encoders, tmp_path, damage)
    expected = warm[2]
    assert blocks.keys() == expected.keys()
    for name, block in expected.items():
        np.testing.assert_allclose(blocks[name], block, atol=1e-6)
    assert str(damaged) in caplog.text
