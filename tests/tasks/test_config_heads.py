"""The fusion section: one params.yaml serves every head, typos still fail."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from modelzoo.registry import names
from tasks.config import params_from_dict
from tasks.errors import ConfigError

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture
def raw() -> dict:
    return copy.deepcopy(yaml.safe_load(PARAMS.read_text()))


@pytest.mark.parametrize("head", names("head"))
def test_repo_fusion_section_is_valid_for_every_head(raw: dict, head: str) -> None:
    raw["fusion"]["head"] = head
    assert params_from_dict(raw).fusion.head == head


def test_option_of_another_head_is_set_aside(raw: dict) -> None:
    raw["fusion"].update({"head": "concat", "rank": 8, "wide": {"crosses": [["category", "price"]]}})
    options = params_from_dict(raw).fusion.head_config().model_dump()
    assert "rank" not in options and "wide" not in options


def test_option_of_the_chosen_head_is_validated(raw: dict) -> None:
    raw["fusion"].update({"head": "bilinear", "rank": 0})
    assert "fusion.rank" in str(pytest.raises(ConfigError, params_from_dict, raw).value)


def test_nested_wide_option_is_validated_for_wide_deep(raw: dict) -> None:
    raw["fusion"].update({"head": "wide_deep", "wide": {"crosses": [["category"]]}})
    message = str(pytest.raises(ConfigError, params_from_dict, raw).value)
    assert "fusion.wide.crosses" in message and "two different columns" in message


def test_class_weight_with_regression_fails(raw: dict) -> None:
    raw["data"]["task"] = "regression"
    raw["train"]["class_weight"] = "balanced"
    assert "train.class_weight" in str(pytest.raises(ConfigError, params_from_dict, raw).value)


def test_training_options_are_range_checked(raw: dict) -> None:
    raw["train"]["modality_dropout"] = 1.0
    assert "train.modality_dropout" in str(pytest.raises(ConfigError, params_from_dict, raw).value)
