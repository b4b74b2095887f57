"""The row-level embedding cache: its five properties, its fault behaviour, its file format.

Real components throughout: the demo generator, ingest and align make the aligned table,
real MiniLM and EfficientNet-Lite0 (at 32 px, to be quick) encode, shards are real Parquet.
Encoders are loaded once per module; a forward hook counts the rows each really encodes,
so "computes nothing" is measured at the model, not taken from the pipeline's own stats.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tasks.cache_keys import text_digest
from tasks.config import Params, params_from_dict
from tasks.contents import BlockRows
from tasks.data.align import DIGEST, ID, SPLIT, align
from tasks.data.demo import generate_demo
from tasks.data.ingest import ingest_sources, read_snapshots
from tasks.errors import DataError
from tasks.features.cache import FeatureCache
from tasks.features.cache.gather import SlotVectors, write_feature_file
from tasks.features.cache.store import CorruptShard, ShardStore
from tasks.features.extract import EncoderSpec, ExtractStats, extract_embeddings
from tasks.features.feature_store import read_blocks, write_blocks
from tests.conftest import tiny_params

BASE_ROWS, ALL_ROWS = 80, 84  # 4 more rows = +5%
_ORIGINAL_LOAD = EncoderSpec.load


# --- data and encoders ------------------------------------------------------------------------


def demo_aligned(root: Path, rows: int) -> tuple[pd.DataFrame, Path]:
    """The aligned table of a `rows`-row demo dataset, made by the real generator, ingest and align."""
    raw = tiny_params(rows=rows)
    raw["data"]["sources"] = [{"path": str(root / "items.csv")}]
    raw["data"]["image_root"] = str(root / "images")
    raw["data"]["audio_root"] = str(root / "audio")  # the generator writes clips beside the images
    data = params_from_dict(raw).data
    generate_demo(root / "items.csv", root / "images", rows=rows, seed=7)
    ingest_sources(data, root / "raw")
    aligned, _ = align(data, read_snapshots(root / "raw"))
    return aligned, root / "images"


def make_params(image_root: Path, cache_dir: Path, image_size: int = 32, chunk_rows: int = 16) -> Params:
    raw = tiny_params(rows=ALL_ROWS)
    raw["data"]["image_root"] = str(image_root)
    raw["encoders"] = {
        "text": {"model": "minilm", "max_length": 32, "batch_size": 16},
        "image": {"model": "efficientnet_lite0", "image_size": image_size, "batch_size": 8},
    }
    raw["cache"] = {"dir": str(cache_dir), "chunk_rows": chunk_rows}
    raw["train"] = {**raw["train"], "device": "cpu"}
    return params_from_dict(raw)


class Encoders:
    """Stands in for EncoderSpec.load: real encoders, loaded once, with loads and rows counted."""

    def __init__(self) -> None:
        self.loaded: dict[tuple, object] = {}
        self.loads: Counter[str] = Counter()
        self.encoded: Counter[str] = Counter()

    def load(self, spec: EncoderSpec) -> object:
        self.loads[spec.kind] += 1
        key = (spec.kind, spec.model, spec.size)
        if key not in self.loaded:
            encoder = _ORIGINAL_LOAD(spec)
            encoder.register_forward_hook(self._counter(spec.kind))
            self.loaded[key] = encoder
        return self.loaded[key]

    def _counter(self, kind: str):  # noqa: ANN202
        def hook(module: object, args: object, output: object) -> None:
            self.encoded[kind] += int(output.shape[0])  # type: ignore[attr-defined]

        return hook

    def reset(self) -> None:
        self.loads.clear()
        self.encoded.clear()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    """84 aligned demo rows; tests use the first 80 as 'the data' and the rest as new rows."""
    return demo_aligned(tmp_path_factory.mktemp("demo"), ALL_ROWS)


@pytest.fixture(scope="module")
def encoders() -> Iterator[Encoders]:
    counting = Encoders()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EncoderSpec, "load", lambda spec: counting.load(spec))
        yield counting


@pytest.fixture(scope="module")
def cold(
    dataset: tuple[pd.DataFrame, Path], encoders: Encoders, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A cache filled by one run over the base rows, and that run's feature files beside it."""
    aligned, images = dataset
    root = tmp_path_factory.mktemp("cold")
    params = make_params(images, root / "cache")
    for modality in ("text", "image"):
        extract_embeddings(params, modality, aligned.iloc[:BASE_ROWS], FeatureCache(root / "cache"),
                           root / f"{modality}.parquet")  # fmt: skip
    return root


@pytest.fixture
def warm(cold: Path, encoders: Encoders, tmp_path: Path) -> Path:
    """A private copy of the filled cache, with the encoder counters at zero."""
    shutil.copytree(cold / "cache", tmp_path / "cache")
    encoders.reset()
    return tmp_path / "cache"


def run(params: Params, aligned: pd.DataFrame, modality: str, out: Path) -> ExtractStats:
    out.parent.mkdir(parents=True, exist_ok=True)
    return extract_embeddings(params, modality, aligned, FeatureCache(params.cache.dir), out)


def rows_by_id(path: Path) -> dict[str, dict[str, np.ndarray]]:
    ids, blocks, present, _ = read_blocks(path)
    return {
        row: {name: np.where(present[name][i], blocks[name][i], np.nan) for name in blocks}
        for i, row in enumerate(ids)
    }


def shard_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/shards/*.parquet"))


# --- the five cache properties ------------------------------------------------------------------


def test_second_run_with_nothing_changed_computes_nothing(
    dataset: tuple[pd.DataFrame, Path], warm: Path, encoders: Encoders, tmp_path: Path
) -> None:
    aligned, images = dataset
    params = make_params(images, warm)
    stats = [run(params, aligned.iloc[:BASE_ROWS], m, tmp_path / f"{m}.parquet") for m in ("text", "image")]
    assert encoders.encoded == Counter()
    assert [s.computed for s in stats] == [0, 0] and all(s.reused == s.unique > 0 for s in stats)


def test_warm_run_does_not_even_load_the_encoders(
    dataset: tuple[pd.DataFrame, Path], warm: Path, encoders: Encoders, tmp_path: Path
) -> None:
    aligned, images = dataset
    params = make_params(images, warm)
    for modality in ("text", "image"):
        run(params, aligned.iloc[:BASE_ROWS], modality, tmp_path / f"{modality}.parquet")
    assert encoders.loads == Counter()


def test_cached_features_equal_the_computed_ones(
    dataset: tuple[pd.DataFrame, Path], cold: Path, warm: Path, tmp_path: Path
) -> None:
    aligned, images = dataset
    params = make_params(images, warm)
    for modality in ("text", "image"):
        run(params, aligned.iloc[:BASE_ROWS], modality, tmp_path / f"{modality}.parquet")
        assert pq.read_table(tmp_path / f"{modality}.parquet").equals(
            pq.read_table(cold / f"{modality}.parquet")
        )


def test_adding_5_percent_rows_computes_only_their_new_contents(
    dataset: tuple[pd.DataFrame, Path], warm: Path, encoders: Encoders, tmp_path: Path
) -> None:
    aligned, images = dataset
    old, new = aligned.iloc[:BASE_ROWS], aligned.iloc[BASE_ROWS:]
    old_texts = set(old["title"].dropna()) | set(old["description"].dropna())
    new_texts = (set(new["title"].dropna()) | set(new["description"].dropna())) - old_texts
    params = make_params(images, warm)
    run(params, aligned, "text", tmp_path / "text.parquet")
    run(params, aligned, "image", tmp_path / "image.parquet")
    assert encoders.encoded == Counter(text=len(new_texts), image=ALL_ROWS - BASE_ROWS)


@pytest.mark.parametrize("change", ["reorder", "resplit", "rejoin"])
def test_reordering_resplitting_or_rejoining_rows_recomputes_nothing(
    change: str, dataset: tuple[pd.DataFrame, Path], warm: Path, encoders: Encoders, tmp_path: Path
) -> None:
    aligned, images = dataset
    rows = aligned.iloc[:BASE_ROWS]
    if change == "reorder":
        rows = rows.sample(frac=1.0, random_state=1)
    elif change == "resplit":
        rows = rows.assign(**{SPLIT: np.roll(rows[SPLIT].to_numpy(), 7)})
    else:  # the same contents under other ids, as a join on another key table would give
        rows = rows.assign(**{ID: "joined-" + rows[ID].astype(str)})[list(reversed(rows.columns))]
    params = make_params(images, warm)
    for modality in ("text", "image"):
        run(params, rows, modality, tmp_path / f"{modality}.parquet")
    assert encoders.encoded == Counter()


def test_changing_only_the_image_encoder_recomputes_only_images(
    dataset: tuple[pd.DataFrame, Path], warm: Path, encoders: Encoders, tmp_path: Path
) -> None:
    aligned, images = dataset
    params = make_params(images, warm, image_size=48)  # another fingerprint for images only
    for modality in ("text", "image"):
        run(params, aligned.iloc[:BASE_ROWS], modality, tmp_path / f"{modality}.parquet")
    assert encoders.encoded == Counter(image=BASE_ROWS)


def test_the_same_image_twice_is_computed_once(
    dataset: tuple[pd.DataFrame, Path], encoders: Encoders, tmp_path: Path
) -> None:
    aligned, images = dataset
    rows = aligned.iloc[:10].copy()
    rows.loc[rows.index[5:], "photo"] = rows["photo"].iloc[0]  # rows 5..9 show row 0's photo
    rows.loc[rows.index[5:], DIGEST + "photo"] = rows[DIGEST + "photo"].iloc[0]
    encoders.reset()
    stats = run(make_params(images, tmp_path / "cache"), rows, "image", tmp_path / "image.parquet")
    features = read_blocks(tmp_path / "image.parquet")[1]["image.photo"]
    assert encoders.encoded["image"] == stats.computed == 5
    np.testing.assert_array_equal(features[5:], np.repeat(features[:1], 5, axis=0))


def test_a_text_in_two_columns_is_computed_once(
    dataset: tuple[pd.DataFrame, Path], encoders: Encoders, tmp_path: Path
) -> None:
    aligned, images = dataset
    rows = aligned.iloc[:6].assign(
        description=aligned["title"].iloc[:6].to_numpy(), present__description=True
    )
    encoders.reset()
    run(make_params(images, tmp_path / "cache"), rows, "text", tmp_path / "text.parquet")
    assert encoders.encoded["text"] == rows["title"].nunique()


# --- faults -----------------------------------------------------------------------------------


def test_a_corrupt_shard_is_reported_and_only_its_rows_recomputed(
    dataset: tuple[pd.DataFrame, Path], cold: Path, warm: Path, encoders: Encoders, tmp_path: Path
) -> None:
    aligned, images = dataset
    image_shards = [
        p for p in shard_files(warm) if pq.ParquetFile(p).schema_arrow.field("vector").type.list_size == 1280
    ]
    victim = image_shards[0]
    rows_in_victim = pq.ParquetFile(victim).metadata.num_rows
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern inside the vectors
    victim.write_bytes(bytes(data))
    stats = run(make_params(images, warm), aligned.iloc[:BASE_ROWS], "image", tmp_path / "image.parquet")
    assert (stats.corrupt_shards, stats.computed, encoders.encoded["image"]) == (
        1,
        rows_in_victim,
        rows_in_victim,
    )
    before, after = rows_by_id(cold / "image.parquet"), rows_by_id(tmp_path / "image.parquet")
    for row, blocks in before.items():
        np.testing.assert_allclose(after[row]["image.photo"], blocks["image.photo"], atol=1e-5)


def test_a_truncated_shard_is_discarded_and_recomputed(
    dataset: tuple[pd.DataFrame, Path], warm: Path, encoders: Encoders, tmp_path: Path
) -> None:
    aligned, images = dataset
    victim = shard_files(warm)[0]
    rows_in_victim = pq.ParquetFile(victim).metadata.num_rows
    victim.write_bytes(victim.read_bytes()[:100])  # what a copy cut short leaves
    stats = [run(make_params(images, warm), aligned.iloc[:BASE_ROWS], m, tmp_path / f"{m}.parquet")
             for m in ("text", "image")]  # fmt: skip
    assert sum(s.corrupt_shards for s in stats) == 1
    assert sum(s.computed for s in stats) == sum(encoders.encoded.values()) == rows_in_victim
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == p.stem for p in shard_files(warm))


def test_an_image_edited_after_align_fails_naming_file_row_and_column(
    dataset: tuple[pd.DataFrame, Path], tmp_path: Path
) -> None:
    aligned, images = dataset
    copy = tmp_path / "images"
    shutil.copytree(images, copy)
    rows = aligned.iloc[:4]
    edited = copy / rows["photo"].iloc[2]
    edited.write_bytes(edited.read_bytes() + b"\0")
    with pytest.raises(DataError) as info:
        run(make_params(copy, tmp_path / "cache"), rows, "image", tmp_path / "image.parquet")
    assert (info.value.file, info.value.rows, info.value.column) == (str(edited), [rows[ID].iloc[2]], "photo")


def test_an_undecodable_image_is_cached_as_absent(
    dataset: tuple[pd.DataFrame, Path], encoders: Encoders, tmp_path: Path
) -> None:
    aligned, images = dataset
    copy = tmp_path / "images"
    shutil.copytree(images, copy)
    rows = aligned.iloc[:4].copy()
    broken = copy / rows["photo"].iloc[1]
    broken.write_bytes(b"not a jpeg at all")
    rows.loc[rows.index[1], DIGEST + "photo"] = hashlib.sha256(b"not a jpeg at all").hexdigest()
    params = make_params(copy, tmp_path / "cache")
    run(params, rows, "image", tmp_path / "first.parquet")
    encoders.reset()
    run(params, rows, "image", tmp_path / "second.parquet")
    present = read_blocks(tmp_path / "second.parquet")[2]["image.photo"]
    assert present.tolist() == [True, False, True, True] and encoders.encoded["image"] == 0


# --- shards and files -------------------------------------------------------------------------


def test_a_shard_round_trips_keys_vectors_and_flags(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, dim=3)
    keys = [text_digest(t) for t in ("a", "b")]
    vectors = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    shard = store.read(store.commit(keys, vectors, np.array([True, False])))
    assert shard.keys == keys and shard.ok.tolist() == [True, False]
    np.testing.assert_array_equal(shard.vectors, vectors)


def test_a_shard_is_named_by_the_sha256_of_its_bytes(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, dim=2)
    name = store.commit([text_digest("a")], np.zeros((1, 2), np.float32), np.ones(1, bool))
    assert hashlib.sha256(store.path(name).read_bytes()).hexdigest() == name


def test_a_flipped_byte_fails_the_checksum(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, dim=2)
    name = store.commit([text_digest("a")], np.ones((1, 2), np.float32), np.ones(1, bool))
    data = bytearray(store.path(name).read_bytes())
    data[-20] ^= 0x01
    store.path(name).write_bytes(bytes(data))
    with pytest.raises(CorruptShard):
        store.read(name)


def test_a_half_written_temp_file_is_never_indexed(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, dim=2)
    name = store.commit([text_digest("a")], np.ones((1, 2), np.float32), np.ones(1, bool))
    partial = store.shard_dir / f".{'0' * 64}.parquet.x1y2.tmp"  # what kill -9 mid-write leaves
    partial.write_bytes(store.path(name).read_bytes()[:50])
    index = store.scan()
    assert index.shards == [name] and index.corrupt == [] and partial.exists()


def test_streamed_feature_file_equals_write_blocks_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    slots = SlotVectors(3, 4, tmp_path / "scratch")
    slots.put(np.arange(3), rng.normal(size=(3, 4)).astype(np.float32), np.array([True, True, False]))
    rows = np.array([0, -1, 2, 1, 0])  # row 1 absent, row 2 undecodable, rows 0 and 4 share a slot
    ids = np.array(["r0", "r1", "r2", "r3", "r4"], dtype=object)
    write_feature_file(tmp_path / "streamed.parquet", ids, [BlockRows("image.photo", rows)], slots, {"k": 1})
    dense = np.zeros((5, 4), np.float32)
    present = np.array([True, False, False, True, True])
    dense[present] = slots.vectors[rows[present]]
    write_blocks(tmp_path / "whole.parquet", ids, {"image.photo": dense}, {"image.photo": present}, {"k": 1})
    slots.close()
    assert pq.read_table(tmp_path / "streamed.parquet").equals(pq.read_table(tmp_path / "whole.parquet"))


# --- two runs at once -------------------------------------------------------------------------


def _extract_images_in_another_process(aligned_path: str, image_root: str, cache: str, out: str) -> int:
    aligned = pd.read_parquet(aligned_path)
    params = make_params(Path(image_root), Path(cache), chunk_rows=8)
    return run(params, aligned, "image", Path(out)).computed


@pytest.mark.slow
def test_two_runs_sharing_a_cache_at_once_leave_it_consistent(
    dataset: tuple[pd.DataFrame, Path], encoders: Encoders, tmp_path: Path
) -> None:
    aligned, images = dataset
    aligned.iloc[:48].to_parquet(tmp_path / "aligned.parquet")
    shared = (str(tmp_path / "aligned.parquet"), str(images), str(tmp_path / "cache"))
    args = [(*shared, str(tmp_path / f"{i}.parquet")) for i in range(2)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        computed = pool.starmap(_extract_images_in_another_process, args)
    store_dirs = {p.parent.parent for p in shard_files(tmp_path / "cache")}
    for directory in store_dirs:
        store = ShardStore(directory, dim=1280)
        for name in store.names():
            store.read(name)  # raises CorruptShard if either run damaged the other's work
    encoders.reset()
    again = run(make_params(images, tmp_path / "cache", chunk_rows=8), aligned.iloc[:48], "image",
                tmp_path / "again.parquet")  # fmt: skip
    assert 48 <= sum(computed) <= 96 and again.computed == 0 and encoders.encoded["image"] == 0
    first, rerun = read_blocks(tmp_path / "0.parquet")[1], read_blocks(tmp_path / "again.parquet")[1]
    np.testing.assert_allclose(first["image.photo"], rerun["image.photo"], atol=1e-5)


def test_a_scan_reads_only_the_shards_it_has_not_read_before(tmp_path: Path, monkeypatch) -> None:
    """A row-at-a-time caller commits a shard per call: each scan must not re-read every earlier one."""
    store = ShardStore(tmp_path, dim=2)
    for i in range(30):
        store.commit([text_digest(str(i))], np.full((1, 2), i, np.float32), np.ones(1, bool))
    first = store.scan()
    opened: list[str] = []
    real = pq.ParquetFile
    monkeypatch.setattr(pq, "ParquetFile", lambda path, *a, **k: opened.append(path) or real(path, *a, **k))
    name = store.commit([text_digest("new")], np.ones((1, 2), np.float32), np.ones(1, bool))
    second = store.scan()
    assert opened == [store.path(name)]
    assert len(second.keys) == len(first.keys) + 1
    new, old = second.locate([text_digest("new"), text_digest("7")])
    assert second.shards[second.shard[new]] == name
    assert second.shards[second.shard[old]] == first.shards[first.shard[first.locate([text_digest("7")])[0]]]
