from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from modelzoo.registry import names
from tasks.config import Params, load_params, params_from_dict
from tasks.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"


@pytest.fixture
def raw() -> dict:
    """The repo's params.yaml as a plain mapping, fresh for each test to mutate."""
    return copy.deepcopy(yaml.safe_load(PARAMS.read_text()))


def config_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        params_from_dict(raw)
    return str(info.value)


def test_repo_params_yaml_loads() -> None:
    params = load_params(PARAMS)
    assert isinstance(params, Params)
    assert params.data.id == "item_id"
    assert params.fusion.head == "concat"


def test_unknown_key_names_its_path(raw: dict) -> None:
    raw["train"]["lrr"] = 0.01
    message = config_error(raw)
    assert "train.lrr" in message
    assert "unknown key" in message


def test_wrong_type_names_its_path(raw: dict) -> None:
    raw["train"]["epochs"] = "ten"
    assert "train.epochs" in config_error(raw)


def test_negative_learning_rate_names_its_path(raw: dict) -> None:
    raw["train"]["lr"] = -0.001
    assert "train.lr" in config_error(raw)


def test_split_fractions_must_sum_to_one(raw: dict) -> None:
    raw["data"]["split"]["fractions"] = {"train": 0.6, "val": 0.2, "test": 0.1}
    message = config_error(raw)
    assert "data.split.fractions" in message
    assert "sum to 1" in message


def test_unknown_fusion_head_names_it_and_lists_registered_heads(raw: dict) -> None:
    raw["fusion"]["head"] = "transfomer"
    message = config_error(raw)
    assert "transfomer" in message
    for registered in names("head"):
        assert registered in message


def test_unknown_head_option_is_named(raw: dict) -> None:
    raw["fusion"]["hiden"] = 128
    message = config_error(raw)
    assert "fusion" in message
    assert "hiden" in message


def test_column_in_two_roles_fails(raw: dict) -> None:
    raw["data"]["columns"]["categorical"] = ["category", "price"]
    message = config_error(raw)
    assert "price" in message
    assert "categorical" in message and "numeric" in message


def test_feature_column_that_is_also_the_target_fails(raw: dict) -> None:
    raw["data"]["columns"]["numeric"] = ["price", "label"]
    assert "label" in config_error(raw)


def test_id_column_that_is_also_the_target_fails(raw: dict) -> None:
    raw["data"]["target"] = raw["data"]["id"]
    assert "item_id" in config_error(raw)


def test_split_column_that_is_also_a_feature_fails(raw: dict) -> None:
    raw["data"]["split"]["column"] = "category"
    assert "category" in config_error(raw)


def test_empty_role_lists_are_accepted(raw: dict) -> None:
    raw["data"]["columns"]["image"] = []
    raw["data"]["columns"]["numeric"] = []
    params = params_from_dict(raw)
    assert params.data.columns.image == []
    assert params.data.columns.numeric == []


def test_no_feature_columns_at_all_fails(raw: dict) -> None:
    raw["data"]["columns"] = {"categorical": [], "numeric": [], "text": [], "image": []}
    assert "at least one feature column" in config_error(raw)


def test_yaml_that_is_not_a_mapping_fails(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(path)


def test_empty_yaml_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(path)


def test_invalid_yaml_syntax_fails(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train: {epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)


def test_missing_params_file_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "absent.yaml")


def test_exponent_floats_in_yaml_are_numbers(tmp_path: Path, raw: dict) -> None:
    # PyYAML's YAML 1.1 reads `1e-3` as a string; learning rates are written this way all the time.
    text = yaml.safe_dump(raw).replace("lr: 0.001", "lr: 1e-3")
    assert "lr: 1e-3" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert load_params(path).train.lr == pytest.approx(1e-3)


def test_yaml_alias_bomb_is_refused_before_expansion(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]  # 10**12 items
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="YAML aliases"):
        load_params(path)


def test_a_few_yaml_aliases_are_fine(tmp_path: Path, raw: dict) -> None:
    text = yaml.safe_dump(raw, sort_keys=False).replace("seed: 42", "seed: &seed 42", 1)
    path = tmp_path / "params.yaml"
    path.write_text(text + "extra_seed_ref: *seed\n")
    with pytest.raises(ConfigError, match="extra_seed_ref"):  # an unknown key, parsed normally
        load_params(path)


@pytest.mark.parametrize("section", ["train", "data.split", "data.demo"])
def test_negative_seed_is_refused_at_load(raw: dict, section: str) -> None:
    node = raw
    for key in section.split("."):
        node = node[key]
    node["seed"] = -1
    assert f"{section}.seed" in config_error(raw)


def test_misspelt_encoders_are_refused_at_load_with_a_suggestion(raw: dict) -> None:
    raw["encoders"]["text"]["model"] = "minilmm"
    assert "did you mean 'minilm'" in config_error(raw)
    raw["encoders"]["text"]["model"] = "minilm"
    raw["encoders"]["image"]["model"] = "torchvision/resnet5"
    assert "torchvision has no model 'resnet5'" in config_error(raw)


def test_fuseline_check_validates_params_and_exits_2_on_a_bomb(tmp_path: Path, capsys) -> None:
    from flows.cli import main

    main(["check", "--params", str(PARAMS)])
    assert "valid" in capsys.readouterr().out
    bomb = tmp_path / "params.yaml"
    bomb.write_text("a: &a [1, 1]\n" + "".join(f"b{i}: &b{i} [*a, *a]\n" for i in range(120)))
    with pytest.raises(SystemExit) as info:
        main(["check", "--params", str(bomb)])
    assert info.value.code == 2
    assert "YAML aliases" in capsys.readouterr().err
