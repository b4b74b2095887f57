"""The registry refuses a plug-in whose declarations cannot become params keys, before adding it."""

from __future__ import annotations

import pytest
from pydantic import Field

from tasks.modalities import embedded, modality, register
from tasks.modalities.text import TextModality
from tasks.strict import Strict


class _NamedNumeric(TextModality):
    name = "numeric"


class _NeedsAModel(Strict):
    model: str
    batch_size: int = Field(1, ge=1)


class _NoDefaults(TextModality):
    name = "nodefaults"
    encoder_config = _NeedsAModel


class _UnsizedConfig(Strict):
    model: str = "toy"
    batch_size: int = Field(1, ge=1)


class _SizedByAMissingKey(TextModality):
    name = "unsized"
    encoder_config = _UnsizedConfig  # has no `max_length`, the size_key it inherits


def test_a_plugin_named_like_a_built_in_role_is_refused() -> None:
    with pytest.raises(ValueError, match="'numeric' is a built-in role"):
        register(_NamedNumeric())
    assert "numeric" not in [m.name for m in embedded()]


def test_a_plugin_whose_encoder_section_has_no_default_is_refused() -> None:
    """params.yaml may leave `encoders.<name>` out: every key needs a default."""
    with pytest.raises(ValueError, match="encoder_config needs a valid default for every key"):
        register(_NoDefaults())


def test_a_plugin_whose_size_key_is_not_an_encoder_key_is_refused() -> None:
    """Else the size knob fails as an AttributeError at the first params load or extraction."""
    with pytest.raises(ValueError, match="size_key must name the encoder_config key"):
        register(_SizedByAMissingKey())


def test_built_in_size_knobs_are_what_the_encoder_fingerprints_record() -> None:
    """Each built-in's default size, under its own key: a cache key, so it must not drift."""
    recorded = {}
    for name in ("text", "image", "audio"):
        plugin = modality(name)
        recorded[name] = plugin.preprocessing(plugin.size_of(plugin.encoder_config()))
    assert recorded == {
        "text": {"max_length": 256},
        "image": {"image_size": 224},
        "audio": {"max_seconds": 30},
    }
