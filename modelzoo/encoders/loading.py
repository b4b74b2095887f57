"""The calls the pipeline makes: load an encoder by name, check a name, and fingerprint it.

Name resolution lives here so that params.yaml can say `minilm`, `aisfx`, a Hugging Face id,
a local directory, `torchvision/resnet50` or any timm name, and feature extraction never has
to know which it got. Registered components are callables: text and audio ones take no
arguments, image ones take `image_size`.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from modelzoo.encoders.base import AudioEncoder, ImageEncoder, TextEncoder, weights_digest
from modelzoo.encoders.huggingface import HuggingFaceTextEncoder, looks_like_local_path
from modelzoo.encoders.huggingface_audio import HuggingFaceAudioEncoder
from modelzoo.encoders.vision import (
    TORCHVISION_PREFIX,
    timm_image_encoder,
    torchvision_image_encoder,
)
from modelzoo.registry import lookup, names

# Libraries whose upgrades can change features computed from the very same weights.
_VERSIONED = ("torch", "transformers", "timm", "torchvision")
# ... and, for an encoder with a tokenizer, the library that runs it (same files, other ids).
_TOKENIZER_VERSIONED = ("tokenizers",)
_DIGEST_ATTRIBUTE = "_fingerprint_weights_digest"


class _TextFactory(Protocol):
    def __call__(self) -> TextEncoder: ...


class _ImageFactory(Protocol):
    def __call__(self, image_size: int) -> ImageEncoder: ...


class _AudioFactory(Protocol):
    def __call__(self) -> AudioEncoder: ...


def load_text_encoder(name: str) -> TextEncoder:
    """A fitted state directory, else a registered name, else a Hugging Face id or local directory.

    In eval mode. A fitted encoder (tfidf) is loaded only from its state directory.
    """
    fitted = fitted_state_owner("text", name)
    if fitted is not None:
        return fitted.from_directory(name).eval()  # type: ignore[attr-defined, no-any-return]
    if name in names("text_encoder"):
        _refuse_fitted_by_name("text", name)
        factory: _TextFactory = lookup("text_encoder", name)  # type: ignore[assignment]
        encoder = factory()
    else:
        encoder = HuggingFaceTextEncoder.from_pretrained(name)
    return encoder.eval()


def fitted_encoder(kind: str, name: str) -> bool:
    """Whether `name` is a registered `kind` encoder made from the data (tfidf), not shipped.

    Such an encoder has no weights to load by name: the pipeline fits it on the train rows
    and loads it from the state directory it wrote (the component's `from_directory`).
    """
    registry_kind = f"{kind}_encoder"
    return name in names(registry_kind) and bool(getattr(lookup(registry_kind, name), "fitted", False))


def fitted_state_owner(kind: str, path: str | Path) -> object | None:
    """The registered fitted `kind` encoder whose state directory `path` is, or None.

    Each fitted component says how to recognise its state (`holds_state`), so adding one
    touches only its own module.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        return None
    registry_kind = f"{kind}_encoder"
    for name in names(registry_kind):
        component = lookup(registry_kind, name)
        if getattr(component, "fitted", False) and component.holds_state(directory):  # type: ignore[attr-defined]
            return component
    return None


def _refuse_fitted_by_name(kind: str, name: str) -> None:
    if fitted_encoder(kind, name):
        raise OSError(
            f"{kind} encoder {name!r} is fitted on the train rows, not shipped: load it from the "
            "state directory its fit wrote"
        )


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


def image_architecture(name: str) -> nn.Module | None:
    """The bare network `name` would load, built on the meta device: no weights, no memory, no download.

    For questions about its layout (can its last blocks be fine-tuned?) before paying for
    weights. None where that cannot be known without fetching something (a hub id, a
    registered encoder that does not expose its `architecture`) or the name names nothing.
    """
    try:
        with torch.device("meta"):
            if name in names("image_encoder"):
                build = getattr(lookup("image_encoder", name), "architecture", None)
                return build() if callable(build) else None
            if name.startswith(TORCHVISION_PREFIX):
                import torchvision.models

                return torchvision.models.get_model(name.removeprefix(TORCHVISION_PREFIX), weights=None)
            if name.startswith("hf-hub:"):
                return None
            import timm

            return timm.create_model(name, pretrained=False) if timm.is_model(name) else None
    except (ValueError, RuntimeError, TypeError, KeyError):
        return None


def load_audio_encoder(name: str) -> AudioEncoder:
    """Registered name first, else a Hugging Face id or local directory; in eval mode."""
    if name in names("audio_encoder"):
        factory: _AudioFactory = lookup("audio_encoder", name)  # type: ignore[assignment]
        encoder = factory()
    else:
        encoder = HuggingFaceAudioEncoder.from_pretrained(name)
    return encoder.eval()


# Why a name cannot name an encoder, or None when it can: only what can be known without
# loading weights or asking a hub (registered names, local directories, the libraries' own
# model lists and the Hugging Face cache). A hub id written `org/name` that is not cached is
# accepted, since a machine with internet can fetch it. Each modality's plug-in asks the one
# that matches how its loader resolves names.


def hub_name_problem(kind: str, name: str) -> str | None:
    """For loaders that take a registered `<kind>_encoder`, else a local directory or a Hugging
    Face id (load_text_encoder, load_audio_encoder)."""
    registered = names(f"{kind}_encoder")
    if name in registered:
        return None
    if not name.strip() or "\x00" in name:
        return f"{name!r} is not a model name"
    if Path(name).expanduser().is_dir():
        return None
    if looks_like_local_path(name):
        return f"{kind} encoder {name!r}: directory {Path(name).expanduser()} does not exist"
    if _in_hf_cache(name) or ("/" in name and not _hub_offline()):
        return None
    return (
        f"{kind} encoder {name!r} is not a registered name ({', '.join(registered)}), not an existing "
        f"directory, and not a Hugging Face id (org/name) in the local cache{_did_you_mean(name, registered)}"
    )


def image_name_problem(name: str) -> str | None:
    """For load_image_encoder: a registered `image_encoder`, `torchvision/<arch>`, `hf-hub:<id>` or timm."""
    registered = names("image_encoder")
    if name in registered:
        return None
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision.models

        arch = name.removeprefix(TORCHVISION_PREFIX)
        available = torchvision.models.list_models()
        if arch in available:
            return None
        return f"torchvision has no model {arch!r}{_did_you_mean(arch, available)}"
    if name.startswith("hf-hub:") and len(name) > len("hf-hub:"):
        return None
    import timm

    if timm.is_model(name):
        return None
    return (
        f"image encoder {name!r} is not a registered name ({', '.join(registered)}), not "
        f"{TORCHVISION_PREFIX}<arch>, hf-hub:<org/name> or a timm model"
        f"{_did_you_mean(name, [*registered, *timm.list_models()])}"
    )


def _in_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - an id the hub library rejects is simply not cached
        return False


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def encoder_fingerprint(
    encoder: TextEncoder | ImageEncoder | AudioEncoder, **preprocessing: Any
) -> dict[str, Any]:
    """Everything that decides an encoder's features, as a JSON-ready cache key.

    Weights are identified by content, not name, so a re-trained checkpoint under an old
    name cannot reuse stale features. The encoder's own preprocessing (pooling for text;
    image_size, mean and std for images; sample_rate, window_samples and peak_normalise for
    audio) is filled in, and keyword arguments add to or override it (for audio, say how
    windows are pooled and hop); text encoders must be given `max_length`, since the
    tokenizer truncates at whatever the caller asks for and the key would otherwise miss it.
    A text encoder with a tokenizer adds its tokenizer's digest and the `tokenizers` version:
    a changed vocabulary feeds the same weights other token ids.
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
    elif isinstance(encoder, AudioEncoder):
        kind = "audio"
        params = {
            "sample_rate": int(encoder.sample_rate),
            "window_samples": int(encoder.window_samples),
            "peak_normalise": bool(encoder.peak_normalise),
        }
    else:
        raise TypeError(f"not an encoder: {type(encoder).__name__}")
    params.update(preprocessing)
    tokenizer = encoder.tokenizer_digest if isinstance(encoder, TextEncoder) else None
    return module_fingerprint(kind, encoder, params, tokenizer)


def module_fingerprint(
    kind: str, encoder: nn.Module, preprocessing: dict[str, Any], tokenizer: str | None = None
) -> dict[str, Any]:
    """The fingerprint of any encoder module with `model_id` and `dim`: what encoder_fingerprint
    builds for the three contracts above, and what a modality with an encoder of another kind
    (a plug-in from another package) records. `preprocessing` is everything besides the
    weights that decides its vectors."""
    versioned = _VERSIONED + (_TOKENIZER_VERSIONED if tokenizer is not None else ())
    fingerprint: dict[str, Any] = {
        "kind": kind,
        "model_id": encoder.model_id,
        "dim": int(encoder.dim),  # type: ignore[arg-type]
        "weights_digest": _memoised_digest(encoder),
        "preprocessing": {key: _jsonable(value, key) for key, value in sorted(preprocessing.items())},
        "versions": {package: _version(package) for package in versioned},
    }
    if tokenizer is not None:
        fingerprint["tokenizer_digest"] = tokenizer
    json.dumps(fingerprint, sort_keys=True, allow_nan=False)  # fail here, not in the cache
    return fingerprint


def _memoised_digest(encoder: nn.Module) -> str:
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


@functools.cache  # a process's installed packages stay put; the lookup scans site-packages (~25 ms)
def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
