"""Encoders loaded once for every bad-input case (the cases differ in data, not in models)."""

from __future__ import annotations

import pytest

from modelzoo.encoders.loading import load_image_encoder, load_text_encoder
from tests.bad_inputs.pipeline import Encoders
from tests.bad_inputs.project import PARAMS


@pytest.fixture(scope="session")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> Encoders:
    size = PARAMS["encoders"]["image"]["image_size"]
    cache_dir = tmp_path_factory.mktemp("bad-inputs-feature-cache")
    return Encoders(load_text_encoder("minilm"), load_image_encoder("efficientnet_lite0", size), cache_dir)
