"""bench/real.py's `--set`: one setting for every dataset, checked before any stage runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import params_from_dict
from tasks.errors import ConfigError
from tests.bench_module import load_bench

real = load_bench("real")


def test_a_setting_reaches_the_params_with_its_yaml_type() -> None:
    params: dict = {"train": {"epochs": 30}}
    real.set_param(params, "train.combine=auto")
    real.set_param(params, "train.epochs=3")
    real.set_param(params, "fusion.wide.crosses=[[category, price]]")
    assert params == {
        "train": {"epochs": 3, "combine": "auto"},
        "fusion": {"wide": {"crosses": [["category", "price"]]}},
    }


def test_each_dataset_runs_with_the_settings_and_a_wrong_key_fails_before_extraction(tmp_path: Path) -> None:
    params = real.dataset_params("flipkart", tmp_path, ["train.combine=stacking"])
    assert params_from_dict(params).train.combine == "stacking"
    with pytest.raises(ConfigError, match="train.combin: unknown key; did you mean 'train.combine'"):
        real.dataset_params("flipkart", tmp_path, ["train.combin=auto"])
    with pytest.raises(ConfigError, match="train.combine: Input should be 'caruana', 'stacking' or 'auto'"):
        real.dataset_params("flipkart", tmp_path, ["train.combine=average"])


@pytest.mark.parametrize("setting", ["train.combine", "=auto"])
def test_a_setting_without_key_and_value_stops_the_command_naming_it(
    setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        real.main(["--set", setting, "--datasets", "flipkart"])
    assert stopped.value.code == 2
    assert f"--set {setting!r}: expected KEY.PATH=VALUE" in capsys.readouterr().err


def test_a_setting_below_a_value_is_refused() -> None:
    with pytest.raises(ValueError, match="'epochs' is not a section"):
        real.set_param({"train": {"epochs": 30}}, "train.epochs.x=3")
