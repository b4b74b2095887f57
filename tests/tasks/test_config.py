from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from modelzoo.registry import names
from tasks.config import Params, load_params, params_from_dict
from tasks.errors import ConfigError
from tests.tasks.data.test_ingest import write_source

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


# --- unknown keys get the closest valid key, and `fuseline check` reads the sources' headers (issue 25) ---


@pytest.mark.parametrize(
    ("path", "typo", "expected"),
    [
        ((), "trian", "trian: unknown key; did you mean 'train'?"),
        (("train",), "lrr", "train.lrr: unknown key; did you mean 'train.lr'?"),
        (("monitor", "threshold"), "alpah", "alpah: unknown key; did you mean 'monitor.threshold.alpha'?"),
        (("fusion",), "hiden", "hiden: unknown key (for head 'concat'); did you mean 'fusion.hidden'?"),
    ],
)  # fmt: skip
def test_an_unknown_key_suggests_the_closest_key_at_its_level(
    raw: dict, path: tuple[str, ...], typo: str, expected: str
) -> None:
    node = raw
    for key in path:
        node = node[key]
    if not path:
        raw[typo] = raw.pop("train")  # the section itself misspelt
    else:
        node[typo] = 1
    assert expected in config_error(raw)


def test_an_unknown_key_in_a_list_item_suggests_the_item_key(tmp_path: Path, raw: dict) -> None:
    raw["data"]["sources"][0]["pathh"] = raw["data"]["sources"][0].pop("path")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(
        ConfigError, match=r"data\.sources\.0\.pathh: unknown key; did you mean 'data\.sources\.0\.path'\?"
    ):
        load_params(path)  # what every command that reads params.yaml calls


def test_an_unknown_key_like_no_other_gets_no_suggestion(raw: dict) -> None:
    raw["train"]["zzzzzz"] = 1
    assert config_error(raw).endswith("train.zzzzzz: unknown key")


def _pets_project(root: Path, fmt: str, columns: dict[str, list[str]]) -> Path:
    """A PetFinder-like source in `fmt` and a params.yaml declaring `columns`; returns the params path."""
    frame = pd.DataFrame(
        {
            "PetID": ["p1", "p2", "p3"],
            "Type": ["dog", "cat", "dog"],
            "Age": [1, 2, 3],
            "Description": ["a good dog", "a calm cat", "a third"],
            "AdoptionSpeed": [4, 0, 2],
        }
    )
    source = root / f"pets.{fmt}"
    write_source(frame, source)
    params = {
        "data": {
            "sources": [{"path": source.name}], "id": "PetID", "target": "AdoptionSpeed",
            "task": "multiclass", "columns": columns,
        }
    }  # fmt: skip
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root / "params.yaml"


def _check(params: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from flows.cli import main

    try:
        main(["check", "--params", str(params)])
        code = 0
    except SystemExit as exited:
        code = int(exited.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_check_names_every_missing_column_with_its_key_file_and_closest_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    monkeypatch.chdir(tmp_path)
    params = _pets_project(
        tmp_path, fmt, {"categorical": ["Typ"], "numeric": ["Age"], "text": ["Descripton"]}
    )
    code, out, err = _check(params, capsys)
    assert code == 2 and "valid" not in out
    assert err.splitlines() == [
        f"fuseline: {params}: data.columns.categorical: column 'Typ' is in none of the sources "
        f"(pets.{fmt}); did you mean 'Type'?",
        f"fuseline: {params}: data.columns.text: column 'Descripton' is in none of the sources "
        f"(pets.{fmt}); did you mean 'Description'?",
    ]


def test_check_names_a_misspelt_id_target_and_split_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    params = _pets_project(tmp_path, "csv", {"numeric": ["Age"]})
    raw = yaml.safe_load(params.read_text())
    raw["data"] |= {"id": "PetId", "target": "AdoptionSped", "split": {"method": "hash", "group": "typ"}}
    params.write_text(yaml.safe_dump(raw))
    code, _, err = _check(params, capsys)
    assert code == 2
    assert [line.split(": ", 2)[2] for line in err.splitlines()] == [
        "data.id: column 'PetId' is not in pets.csv; did you mean 'PetID'?",
        "data.target: column 'AdoptionSped' is in none of the sources (pets.csv); "
        "did you mean 'AdoptionSpeed'?",
        "data.split.group: column 'typ' is in none of the sources (pets.csv); did you mean 'Type'?",
    ]


def test_check_passes_when_every_column_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    params = _pets_project(tmp_path, "csv", {"categorical": ["Type"], "text": ["Description"]})
    code, out, err = _check(params, capsys)
    assert (code, err) == (0, "") and "valid" in out


def test_check_reads_jsonl_records_only_until_every_column_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key may first appear in a later record; once all are seen the rest is not read (here: not JSON)."""
    monkeypatch.chdir(tmp_path)
    params = _pets_project(tmp_path, "jsonl", {"text": ["Description"], "numeric": ["Weight"]})
    source = tmp_path / "pets.jsonl"
    source.write_text(source.read_text() + '{"PetID": "p4", "Weight": 2.5}\nnot json, never read\n')
    code, out, err = _check(params, capsys)
    assert (code, err) == (0, "") and "valid" in out


# --- evaluate.metric ---------------------------------------------------------------------


def test_metric_defaults_to_auto_which_keeps_each_tasks_metric_and_val_loss(raw: dict) -> None:
    evaluate = params_from_dict(raw).evaluate
    assert evaluate.metric == "auto" and evaluate.chosen("binary") == "auc"
    assert evaluate.chosen("regression") == "rmse" and evaluate.epoch_metric("binary") is None


def test_a_chosen_metric_decides_epochs_too(raw: dict) -> None:
    raw["data"]["task"] = "multiclass"
    raw["evaluate"]["metric"] = "f1_macro"
    evaluate = params_from_dict(raw).evaluate
    assert evaluate.chosen("multiclass") == evaluate.epoch_metric("multiclass") == "f1_macro"


@pytest.mark.parametrize(
    ("task", "metric"), [("binary", "rmse"), ("binary", "quadratic_kappa"), ("regression", "auc")]
)
def test_a_metric_that_does_not_fit_the_task_fails_at_load_naming_the_key(
    raw: dict, task: str, metric: str
) -> None:
    raw["data"]["task"] = task
    raw["train"].pop("class_weight", None)
    raw["evaluate"]["metric"] = metric
    message = config_error(raw)
    assert f"evaluate.metric: {metric!r} does not fit a {task} task; choose one of auto, " in message
    assert "\n" not in message


def test_a_misspelt_metric_names_the_key(raw: dict) -> None:
    raw["evaluate"]["metric"] = "macro_f1"
    assert "evaluate.metric: Input should be 'auto', 'accuracy'" in config_error(raw)
