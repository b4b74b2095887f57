"""Fine-tuning EfficientNet-Lite0's last block with a fusion head, the feature-map cache under
it, and the fine-tuned image member through its bundle.

A small real set: 48 PNG files in tmp_path whose dominant colour decides the class, a tabular
block of noise, the packaged efficientnet_lite0 weights, images at 64 pixels.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from modelzoo.encoders.base import ImageEncoder
from modelzoo.encoders.loading import encoder_fingerprint, load_image_encoder
from modelzoo.encoders.split import top_state
from tasks.config import FusionConfig, TrainConfig
from tasks.errors import BundleError, DataError
from tasks.modalities import modality
from tasks.modalities.base import FineTuning
from tasks.modalities.image import ImageEncoderConfig, ImageFinetuneConfig
from tasks.schema import DIGEST, ID, PRESENT
from tasks.train.bundle import BundleMeta, write_bundle
from tasks.train.dataset import FeatureSet
from tasks.train.finetune_loop import FineTuned
from tasks.train.finetuned_files import top_weights_name
from tasks.train.finetuned_member import (
    FinetunedResult,
    fine_tuning,
    member_loaders,
    predict_finetuned,
    train_finetuned,
)
from tasks.train.plan import finetuned_kind

ROWS = 48
SPLIT = np.array(["train"] * 30 + ["val"] * 9 + ["test"] * 9)
COLOURS = ((200, 40, 40), (40, 170, 60), (50, 60, 200))
ABSENT_ROW, DUPLICATE_ROWS = 5, (20, 21)  # no image; two rows naming one file
FUSION = FusionConfig(head="concat", hidden=32, dropout=0.0)
TRAIN = TrainConfig(epochs=3, lr=3e-3, patience=3, seed=0, device="cpu")
IMAGE = ImageEncoderConfig(
    image_size=64, batch_size=16, finetune=ImageFinetuneConfig(blocks=1, lr=1e-3, epochs=3, batch_size=16)
)
FINETUNED_IMAGE = finetuned_kind("image")
IMAGE_TOP_WEIGHTS = top_weights_name("image")


def write_images(root: Path) -> tuple[FeatureSet, pd.DataFrame]:
    """PNG files (colour = class, plus noise) and the aligned-like rows and features that name them."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, ROWS)
    root.mkdir(parents=True, exist_ok=True)
    paths: list[str | None] = []
    for row in range(ROWS):
        pixels = np.clip(np.array(COLOURS[label[row]]) + rng.normal(0, 40, (48, 48, 3)), 0, 255)
        name = f"img{row:02d}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(root / name)
        paths.append(name)
    paths[ABSENT_ROW] = None
    paths[DUPLICATE_ROWS[1]] = paths[DUPLICATE_ROWS[0]]
    label[DUPLICATE_ROWS[1]] = label[DUPLICATE_ROWS[0]]
    digests = [hashlib.sha256((root / p).read_bytes()).hexdigest() if p else None for p in paths]
    rows = pd.DataFrame(
        {
            ID: [f"r{i}" for i in range(ROWS)],
            "photo": pd.array(paths, dtype="string"),
            DIGEST + "photo": pd.array(digests, dtype="string"),
            PRESENT + "photo": [p is not None for p in paths],
        }
    )
    features = FeatureSet(
        ids=rows[ID].to_numpy(),
        split=SPLIT,
        target=label.astype(np.int64),
        inputs={
            "tabular": rng.normal(size=(ROWS, 3)).astype(np.float32),
            "image.photo": np.zeros((ROWS, 1280), dtype=np.float32),  # the frozen block, replaced
        },
        present={"tabular": np.ones(ROWS, dtype=bool), "image.photo": rows[PRESENT + "photo"].to_numpy()},
        classes=("red", "green", "blue"),
    )
    return features, rows


def entries(cache_dir: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in (cache_dir / "hidden").rglob("*.npy")}


@pytest.fixture(scope="module")
def lite0() -> ImageEncoder:
    return load_image_encoder("efficientnet_lite0", IMAGE.image_size)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FeatureSet, pd.DataFrame]:
    root = tmp_path_factory.mktemp("images")
    return (root, *write_images(root))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image-finetune-cache")


def tuning(lite0: ImageEncoder) -> FineTuning:
    return fine_tuning(modality("image"), IMAGE, lite0)


def fine_tune(data, lite0: ImageEncoder, cache_dir: Path) -> FineTuned:
    root, features, rows = data
    return train_finetuned(
        tuning(lite0), features, rows, ["photo"], "multiclass", FUSION, TRAIN, cache_dir, root, progress=False
    )


def predict(first: FineTuned, data, lite0: ImageEncoder, cache_dir: Path) -> np.ndarray:
    root, features, rows = data
    return predict_finetuned(
        tuning(lite0), first.head, first.top, features, rows, ["photo"], "multiclass", None, cache_dir, root
    )


@pytest.fixture(scope="module")
def first(data, lite0: ImageEncoder, cache_dir: Path) -> FineTuned:
    return fine_tune(data, lite0, cache_dir)


@pytest.fixture(scope="module")
def bundle(first: FineTuned, data, lite0: ImageEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fine-tuned model written as train writes a member: head bundle, top weights, finetune.json."""
    root = data[0]
    result = FinetunedResult.from_fitted(first, ".", modality="image", section=IMAGE, root=root)
    directory = tmp_path_factory.mktemp("members") / FINETUNED_IMAGE
    write_bundle(directory, first.head, bundle_meta(first, root, encoder_fingerprint(lite0)))
    result.write_extras(directory)
    return directory


def bundle_meta(fitted: FineTuned, root: Path, fingerprint: dict) -> BundleMeta:
    return BundleMeta(
        task="multiclass",
        fusion=FUSION.model_dump(),
        in_dims=fitted.in_dims,
        out_dim=fitted.out_dim,
        classes=("red", "green", "blue"),
        target_scaling=None,
        encoders={"image": fingerprint},
        tabular=None,
        best_epoch=fitted.best_epoch,
        params={"data": {"image_root": str(root)}},
    )


def test_fine_tuning_learns_the_colours(first: FineTuned, data, lite0, cache_dir: Path) -> None:
    features = data[1]
    probabilities = predict(first, data, lite0, cache_dir)
    assert probabilities.shape == (ROWS, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    held_out = (features.split != "train") & features.present["image.photo"]
    assert float((probabilities.argmax(axis=1) == features.target)[held_out].mean()) >= 0.8


def test_result_describes_the_fine_tuned_model(first: FineTuned) -> None:
    assert (first.columns, first.depth, first.out_dim) == (("photo",), 1, 3)
    assert first.in_dims == {"tabular": 3, "image.photo": 1280}
    assert len(first.top.blocks) == 1 and not first.top.training and not first.head.training


def test_cache_holds_one_float16_map_per_distinct_image(first: FineTuned, data, cache_dir: Path) -> None:
    _, _, rows = data
    distinct = set(rows[DIGEST + "photo"].dropna())
    assert len(distinct) == ROWS - 2  # the absent row and the duplicate
    assert first.computed == len(distinct) and first.read == 0
    paths = sorted((cache_dir / "hidden").rglob("*.npy"))
    assert sorted(path.stem for path in paths) == sorted(distinct)
    array = np.load(paths[0])
    assert array.dtype == np.float16 and array.shape == (192, 2, 2)  # the map entering the last block


def test_second_run_reads_every_map_and_never_opens_an_image(
    first: FineTuned, data, lite0, cache_dir: Path
) -> None:
    """With the image files moved away, a second run can only succeed from the cache: no file is
    read, decoded or run through the lower blocks (a file it tried would fail as missing)."""
    root, features, rows = data
    before = entries(cache_dir)
    hidden = root.with_name(root.name + "-away")
    shutil.move(root, hidden)
    try:
        second = fine_tune(data, lite0, cache_dir)
    finally:
        shutil.move(hidden, root)
    assert (second.computed, second.read) == (0, len(before))
    assert entries(cache_dir) == before
    assert second.history == first.history  # same seed, same cached maps: the same training
    for key, value in top_state(first.top).items():
        assert torch.equal(value, top_state(second.top)[key])


def test_member_loaded_from_its_bundle_predicts_what_training_left(
    first: FineTuned, bundle: Path, data, lite0, cache_dir: Path
) -> None:
    root, features, rows = data
    member = member_loaders(cache_dir)[FINETUNED_IMAGE](bundle)
    info = json.loads((bundle / "finetune.json").read_text())
    assert (info["kind"], info["blocks"], info["columns"]) == (FINETUNED_IMAGE, 1, ["photo"])
    expected = predict(first, data, lite0, cache_dir)
    np.testing.assert_allclose(member.predict(features, rows), expected, atol=1e-6)


def test_changed_top_weights_are_refused(bundle: Path, tmp_path: Path, cache_dir: Path) -> None:
    copy = tmp_path / FINETUNED_IMAGE
    shutil.copytree(bundle, copy)
    weights = bytearray((copy / IMAGE_TOP_WEIGHTS).read_bytes())
    weights[-8:] = bytes(255 - b for b in weights[-8:])  # flip the last weights' bytes
    (copy / IMAGE_TOP_WEIGHTS).write_bytes(bytes(weights))
    with pytest.raises(BundleError, match="image weights changed after training \\(digest mismatch\\)"):
        member_loaders(cache_dir)[FINETUNED_IMAGE](copy)


def test_other_base_encoder_weights_are_refused(
    first: FineTuned, data, lite0, tmp_path: Path, cache_dir: Path
) -> None:
    fingerprint = {**encoder_fingerprint(lite0), "weights_digest": "0" * 16}  # trained on other weights
    directory = tmp_path / FINETUNED_IMAGE
    write_bundle(directory, first.head, bundle_meta(first, data[0], fingerprint))
    FinetunedResult.from_fitted(first, ".", modality="image", section=IMAGE).write_extras(directory)
    with pytest.raises(BundleError, match="is not the one the fine-tuned image model was trained on"):
        member_loaders(cache_dir)[FINETUNED_IMAGE](directory)


def test_an_image_changed_since_align_is_an_error_not_a_stale_map(data, lite0, tmp_path: Path) -> None:
    root, features, rows = data
    copy = tmp_path / "images"
    shutil.copytree(root, copy)
    Image.new("RGB", (48, 48), (0, 0, 0)).save(copy / "img07.png")  # edited after its digest was taken
    with pytest.raises(DataError, match="changed since align"):
        train_finetuned(
            tuning(lite0), features, rows, ["photo"], "multiclass", FUSION, TRAIN, tmp_path / "cache", copy,
            progress=False,
        )  # fmt: skip
