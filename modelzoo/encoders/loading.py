"""The three calls the pipeline makes: load an encoder by name, and fingerprint it.

Name resolution lives here so that params.yaml can say `minilm`, a Hugging Face id, a local
directory, `torchvision/resnet50` or any timm name, and feature extraction never has to
know which it got. Registered components are callables: text ones take no arguments, image
ones take `image_size`.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any, Protocol

from modelzoo.encoders.base import ImageEncoder, TextEncoder, weights_digest
from modelzoo.encoders.huggingface import HuggingFaceTextEncoder
from modelzoo.encoders.vision import (
    TORCHVISION_PREFIX,
    timm_image_encoder,
    torchvision_image_encoder,
)
from modelzoo.registry import lookup, names

# Libraries whose upgrades can change features computed from the very same weights.
_VERSIONED = ("torch", "transformers", "timm", "torchvision")
_DIGEST_ATTRIBUTE = "_fingerprint_weights_digest"


class _TextFactory(Protocol):
    def __call__(self) -> TextEncoder: ...


class _ImageFactory(Protocol):
    def __call__(self, image_size: int) -> ImageEncoder: ...


def load_text_encoder(name: str) -> TextEncoder:
    """Registered name first, else a Hugging Face id or local directory; in eval mode."""
    if name in names("text_encoder"):
        factory: _TextFactory = lookup("text_encoder", name)  # type: ignore[assignment]
        encoder = factory()
    else:
        encoder = HuggingFaceTextEncoder.from_pretrained(name)
    return encoder.eval()


def load_image_encoder(name: str, image_size: int) -> ImageEncoder:
    """Registered name first, else `torchvision/<arch>`, else a timm name; in eval mode."""
    if name in names("image_encoder"):
        factory: _ImageFactory = lookup("image_encoder", name)  # type: ignore[assignment]
        encoder = factory(image_size=image_size)
    elif name.startswith(TORCHVISION_PREFIX):
        encoder = torchvision_image_encoder(name, image_size)
    else:
        encoder = timm_image_encoder(name, image_size)
    return encoder.eval()


def encoder_fingerprint(encoder: TextEncoder | ImageEncoder, **preprocessing: Any) -> dict[str, Any]:
    """Everything that decides an encoder's features, as a JSON-ready cache key.

    Weights are identified by content, not name, so a re-trained checkpoint under an old
    name cannot reuse stale features. The encoder's own preprocessing (pooling for text;
    image_size, mean and std for images) is filled in, and keyword arguments add to or
    override it; text encoders must be given `max_length`, since the tokenizer truncates at
    whatever the caller asks for and the key would otherwise miss it.
    """
    if isinstance(encoder, TextEncoder):
        kind = "text"
        if "max_length" not in preprocessing:
            raise TypeError("a text encoder's fingerprint needs max_length")
        params: dict[str, Any] = {"pooling": encoder.pooling}
    elif isinstance(encoder, ImageEncoder):
        kind = "image"
        params = {
            "image_size": encoder.preprocessing.image_size,
            "mean": encoder.preprocessing.mean,
            "std": encoder.preprocessing.std,
        }
    else:
        raise TypeError(f"not an encoder: {type(encoder).__name__}")
    params.update(preprocessing)

    fingerprint = {
        "kind": kind,
        "model_id": encoder.model_id,
        "dim": int(encoder.dim),
        "weights_digest": _memoised_digest(encoder),
        "preprocessing": {key: _jsonable(value, key) for key, value in sorted(params.items())},
        "versions": {package: _version(package) for package in _VERSIONED},
    }
    json.dumps(fingerprint, sort_keys=True, allow_nan=False)  # fail here, not in the cache
    return fingerprint


def _memoised_digest(encoder: TextEncoder | ImageEncoder) -> str:
    """Hashing tens of MB of weights is not free; loaded encoders are frozen, so once will do."""
    digest = encoder.__dict__.get(_DIGEST_ATTRIBUTE)
    if digest is None:
        digest = weights_digest(encoder)
        encoder.__dict__[_DIGEST_ATTRIBUTE] = digest
    return digest


def _jsonable(value: Any, key: str) -> Any:
    """Tuples become lists so a key built from a dataclass equals one read back from JSON."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(item, key) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"preprocessing parameter {key!r} is not JSON-serialisable: {value!r}")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
