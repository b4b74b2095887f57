"""Pretrained encoders: offline loading, output contracts, weight sanity and cache keys."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from skimage.data import chelsea
from torch import nn

from modelzoo.encoders import huggingface
from modelzoo.encoders.base import ImageEncoder, ImagePreprocessing, TextEncoder
from modelzoo.encoders.efficientnet_lite0 import (
    build_timm_lite0,
    packaged_weights_path,
    remap_efficientnet_pytorch_keys,
    stage_depths_of,
)
from modelzoo.encoders.huggingface import packing_pays
from modelzoo.encoders.loading import encoder_fingerprint, load_image_encoder, load_text_encoder
from modelzoo.encoders.minilm import packaged_model_dir
from modelzoo.encoders.vision import strip_classifier
from modelzoo.registry import names

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return load_text_encoder("minilm")


@pytest.fixture(scope="module")
def lite0() -> ImageEncoder:
    return load_image_encoder("efficientnet_lite0", image_size=224)


def embed(encoder: TextEncoder, texts: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        return encoder(**encoder.tokenize(texts, max_length=64))


def cat_photo(preprocessing: ImagePreprocessing) -> torch.Tensor:
    """Chelsea the cat, shorter side resized to image_size, centre-cropped and normalised."""
    size = preprocessing.image_size
    pixels = torch.from_numpy(chelsea()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    height, width = pixels.shape[-2:]
    scale = size / min(height, width)
    pixels = F.interpolate(
        pixels,
        size=(round(height * scale), round(width * scale)),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    )
    top = (pixels.shape[-2] - size) // 2
    left = (pixels.shape[-1] - size) // 2
    pixels = pixels[..., top : top + size, left : left + size]
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


def test_minilm_ranks_paraphrase_above_unrelated(minilm: TextEncoder) -> None:
    anchor, paraphrase, unrelated = embed(
        minilm,
        ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell today."],
    )
    assert anchor @ paraphrase > anchor @ unrelated


def test_minilm_embeddings_are_unit_length_384(minilm: TextEncoder) -> None:
    embeddings = embed(minilm, ["one sentence", "and another, somewhat longer, sentence"])
    assert embeddings.shape == (2, 384) == (2, minilm.dim)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))


def test_minilm_tokenize_pads_to_longest_row_not_max_length(minilm: TextEncoder) -> None:
    texts = ["short", "a noticeably longer sentence that needs many more word pieces"]
    batch = minilm.tokenize(texts, max_length=128)
    longest = len(minilm.tokenize(texts[1:], max_length=128)["input_ids"][0])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, longest)
    assert longest < 128


MIXED = [
    "mug",
    "a stoneware mug with a speckled glaze, hand thrown and fired twice",
    "steel water bottle",
    "a folding chair of beech and canvas that seats one adult and packs flat for the car boot",
]


def test_a_small_mixed_batch_runs_packed_and_gives_the_padded_embeddings(
    minilm: TextEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packed (no padding, rows masked from each other) equals padded to float rounding."""
    batch = minilm.tokenize(MIXED, max_length=64)
    assert packing_pays(batch["attention_mask"], minilm._pair_cost)
    calls: list[tuple[int, ...]] = []
    forward = minilm.model.forward
    monkeypatch.setattr(
        minilm.model, "forward", lambda **kw: calls.append(tuple(kw["input_ids"].shape)) or forward(**kw)
    )
    packed = embed(minilm, MIXED)
    real_tokens = int(batch["attention_mask"].sum())
    assert calls == [(1, real_tokens)]  # one sequence of the real tokens only
    monkeypatch.setattr(huggingface, "packing_pays", lambda mask, cost: False)
    padded = embed(minilm, MIXED)
    assert calls[-1] == tuple(batch["input_ids"].shape)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)
    # each row alone (no neighbours at all) agrees too: rows cannot see each other packed
    alone = torch.cat([embed(minilm, [text]) for text in MIXED])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)


def test_packing_is_for_padded_small_batches_at_inference_on_bert(
    minilm: TextEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    cost = minilm._pair_cost
    assert not packing_pays(torch.ones(64, 12, dtype=torch.int64), cost)  # no padding to save
    sorted_long = torch.ones(64, 200, dtype=torch.int64)
    sorted_long[:, 190:] = 0  # a length-sorted batch: little padding, N^2 attention would cost more
    assert not packing_pays(sorted_long, cost)
    ids = minilm.tokenize(MIXED, max_length=64)["input_ids"]
    with torch.inference_mode():
        assert minilm._packs(ids)
    assert not minilm._packs(ids)  # gradients on: fine-tuning keeps the padded forward
    monkeypatch.setattr(minilm.model.config, "model_type", "roberta")
    with torch.inference_mode():
        assert not minilm._packs(ids)  # positions numbered its own way: padded


def test_generic_hf_encoder_loads_a_local_directory(minilm: TextEncoder) -> None:
    generic = load_text_encoder(str(packaged_model_dir()))
    texts = ["A man is playing a guitar.", "The stock market fell today."]
    assert (generic.model_id, generic.dim) == (str(packaged_model_dir()), 384)
    torch.testing.assert_close(embed(generic, texts), embed(minilm, texts))


def test_lite0_finds_a_cat_in_its_top5(lite0: ImageEncoder) -> None:
    with torch.inference_mode():
        logits = lite0.classify(cat_photo(lite0.preprocessing))  # type: ignore[operator]
    assert IMAGENET_CATS & set(logits[0].topk(5).indices.tolist())


def test_lite0_forward_returns_pooled_1280_features(lite0: ImageEncoder) -> None:
    with torch.inference_mode():
        features = lite0(torch.zeros(2, 3, 224, 224))
    assert features.shape == (2, 1280) == (2, lite0.dim)


def test_lite0_preprocessing_matches_timm_tf_lite_config(lite0: ImageEncoder) -> None:
    config = build_timm_lite0().pretrained_cfg
    assert (lite0.preprocessing.mean, lite0.preprocessing.std) == (config["mean"], config["std"])


def test_lite0_remap_loads_strictly() -> None:
    raw = torch.load(packaged_weights_path(), weights_only=True, map_location="cpu")
    model = build_timm_lite0()
    result = model.load_state_dict(remap_efficientnet_pytorch_keys(raw, stage_depths_of(model)), strict=True)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])


def test_fingerprint_is_stable_and_json_ready(minilm: TextEncoder) -> None:
    first = encoder_fingerprint(minilm, max_length=128)
    assert encoder_fingerprint(minilm, max_length=128) == first == json.loads(json.dumps(first))


def test_fingerprint_is_equal_for_two_loads_of_the_same_encoder(lite0: ImageEncoder) -> None:
    again = load_image_encoder("efficientnet_lite0", image_size=224)
    assert encoder_fingerprint(again) == encoder_fingerprint(lite0)


def test_fingerprint_changes_with_max_length(minilm: TextEncoder) -> None:
    assert encoder_fingerprint(minilm, max_length=128) != encoder_fingerprint(minilm, max_length=64)


def test_fingerprint_changes_with_image_size(lite0: ImageEncoder) -> None:
    larger = load_image_encoder("efficientnet_lite0", image_size=256)
    assert encoder_fingerprint(larger) != encoder_fingerprint(lite0)


def test_registry_lists_the_packaged_encoders() -> None:
    assert "minilm" in names("text_encoder")
    assert "efficientnet_lite0" in names("image_encoder")


def test_unknown_local_text_model_fails_fast_and_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"'/nonexistent/model'.*no local weights were found"):
        load_text_encoder("/nonexistent/model")


@pytest.mark.parametrize("name", ["torchvision/no_such_arch", "no_such_timm_model"])
def test_unknown_image_model_fails_clearly(name: str) -> None:
    with pytest.raises(ValueError, match=rf"'{name}'.*no local weights were found"):
        load_image_encoder(name, image_size=224)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_strip_classifier_leaves_pooled_features(arch: str) -> None:
    import torchvision.models

    model: nn.Module = torchvision.models.get_model(arch, weights=None).eval()
    dim = strip_classifier(model, arch)
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, dim)
