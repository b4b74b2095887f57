"""The registry refuses a plug-in whose declarations cannot become params keys, before adding it."""

from __future__ import annotations

import pytest
from pydantic import Field

from tasks.modalities import embedded, register
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


def test_a_plugin_named_like_a_built_in_role_is_refused() -> None:
    with pytest.raises(ValueError, match="'numeric' is a built-in role"):
        register(_NamedNumeric())
    assert "numeric" not in [m.name for m in embedded()]


def test_a_plugin_whose_encoder_section_has_no_default_is_refused() -> None:
    """params.yaml may leave `encoders.<name>` out: every key needs a default."""
    with pytest.raises(ValueError, match="encoder_config needs a valid default for every key"):
        register(_NoDefaults())
