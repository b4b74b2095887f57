"""How extraction prepares encoder inputs around the forward (bench/extract.py's ratios).

On a 2-core CPU the forward owns both cores: images are decoded only when the next batch is
asked for (a thread decoding ahead took the forward's cores mid-op), texts are tokenised a
batch ahead (cheap, and the tokenizer releases the GIL), pixels are normalised in one pass,
and feature files store vectors without dictionary pages or statistics.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import tasks.modalities.image as image_modality
from modelzoo.encoders.base import ImagePreprocessing
from modelzoo.encoders.loading import load_text_encoder
from tasks.contents import BlockRows
from tasks.data.demo import generate_demo
from tasks.features.cache.gather import SlotVectors, write_feature_file
from tasks.images import load_square_rgb
from tasks.modalities.image import DECODED, close_batches, decoded_batches, normalise_images
from tasks.modalities.text import encode_sorted_texts

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("photos")
    generate_demo(root / "items.csv", root / "images", rows=10, seed=3)
    return sorted((root / "images").glob("*.jpg"))


def test_images_are_decoded_when_asked_for_not_ahead_on_a_small_cpu(
    photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_modality, "decode_workers", lambda device: 0)
    decoded: list[int] = []
    read = image_modality._ImageFiles.__getitem__

    def counting(self: image_modality._ImageFiles, index: int) -> tuple[np.ndarray, int]:
        decoded.append(index)
        return read(self, index)

    monkeypatch.setattr(image_modality._ImageFiles, "__getitem__", counting)
    digests = [hashlib.sha256(path.read_bytes()).digest() for path in photos]
    batches = decoded_batches(photos, digests, 64, 4, CPU)
    time.sleep(0.3)  # a decode-ahead thread would have decoded every photo by now
    assert decoded == []  # nothing runs before the first batch is asked for
    pixels, outcome = next(batches)
    time.sleep(0.3)
    assert sorted(decoded) == [0, 1, 2, 3]  # that batch and no further
    assert outcome.tolist() == [DECODED] * 4
    expected = np.stack([load_square_rgb(path, 64) for path in photos[:4]])
    assert np.array_equal(pixels.numpy(), expected)
    rest = list(batches)
    assert [len(p) for p, _ in rest] == [4, len(photos) - 8]
    assert np.array_equal(rest[-1][0][-1].numpy(), load_square_rgb(photos[-1], 64))


@pytest.mark.timeout(60)
def test_closing_the_decoder_early_stops_it(photos: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_modality, "decode_workers", lambda device: 0)
    digests = [hashlib.sha256(path.read_bytes()).digest() for path in photos]
    batches = decoded_batches(photos, digests, 32, 2, CPU)
    next(batches)
    close_batches(batches)
    assert next(batches, None) is None


def test_pixels_are_normalised_as_the_encoder_expects_in_channels_last() -> None:
    prep = ImagePreprocessing(image_size=8, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    seeded = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (3, 8, 8, 3), dtype=torch.uint8, generator=seeded)
    images = normalise_images(pixels, prep, CPU)
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    reference = (pixels.permute(0, 3, 1, 2).double() / 255.0 - mean.double()) / std.double()
    assert images.dtype == torch.float32 and images.shape == (3, 3, 8, 8)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(images.double(), reference, atol=2e-6, rtol=0)


def test_texts_tokenised_ahead_encode_exactly_as_tokenised_in_line() -> None:
    encoder = load_text_encoder("minilm").eval()
    texts = sorted(["a red kettle", "blue", "a very long description of a lamp " * 3, "mug", "pan"], key=len)
    vectors, forward = encode_sorted_texts(encoder, texts, 32, 2, CPU)
    expected = []
    with torch.inference_mode():
        for start in range(0, len(texts), 2):
            tokens = encoder.tokenize(texts[start : start + 2], 32)
            expected.append(encoder(tokens["input_ids"], tokens["attention_mask"]).numpy())
    assert np.array_equal(vectors, np.concatenate(expected)) and forward > 0
    with pytest.raises(ValueError, match="max_length"):  # the tokenizer's error, raised here
        encode_sorted_texts(encoder, texts, 1, 2, CPU)


def test_feature_files_store_vectors_without_dictionaries_or_statistics(tmp_path: Path) -> None:
    slots = SlotVectors(40, 8, tmp_path / "scratch")
    vectors = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    slots.put(np.arange(40), vectors, np.ones(40, bool))
    ids = np.array([f"row-{i}" for i in range(40)], dtype=object)
    write_feature_file(tmp_path / "f.parquet", ids, [BlockRows("text.title", np.arange(40) % 40)], slots, {})
    slots.close()
    group = pq.ParquetFile(tmp_path / "f.parquet").metadata.row_group(0)
    columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    vector = next(column for path, column in columns.items() if path.startswith("text.title."))
    assert not vector.is_stats_set
    assert not any("DICTIONARY" in encoding for encoding in vector.encodings)
    assert columns["row_id"].is_stats_set
