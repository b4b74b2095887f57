"""data.positive_class: which binary label AUC, F1 and prob_<label> are about, named in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tasks.config import params_from_dict
from tasks.data.align import align
from tasks.errors import ConfigError, DataError
from tasks.train.assemble import encode_target
from tests.tasks.evaluate.test_flow import _items, _params, _write_inputs


def test_the_positive_class_is_put_second() -> None:
    values = pd.Series(["yes", "no", "yes"])
    assert encode_target(values, "binary")[1] == ("no", "yes")  # by default the one sorting second
    codes, classes = encode_target(values, "binary", positive="no")
    assert classes == ("yes", "no") and codes.tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(DataError, match="'maybe' is not a value of the target"):
        encode_target(values, "binary", positive="maybe")


def test_only_a_binary_task_takes_one() -> None:
    raw = _params()
    raw["data"] |= {"task": "multiclass", "positive_class": "yes"}
    with pytest.raises(ConfigError, match="positive_class: only a binary task"):
        params_from_dict(raw)


def test_align_refuses_a_positive_class_the_target_never_takes() -> None:
    raw = _params()
    raw["data"]["positive_class"] = "Yes"
    data = params_from_dict(raw).data
    with pytest.raises(
        DataError, match=r"positive_class 'Yes' is not a value of the target \(its classes: \['no', 'yes'\]\)"
    ):
        align(data, [("items.csv", _items())])


@pytest.mark.slow
def test_the_report_names_the_chosen_positive_class(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.evaluate import evaluate
    from flows.train import train

    monkeypatch.chdir(tmp_path)
    _write_inputs(tmp_path)
    raw = _params()
    raw["data"]["positive_class"] = "no"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    train(params_path="params.yaml")
    report = evaluate(params_path="params.yaml")
    assert report["positive_class"] == "no"
    assert json.loads((tmp_path / "models" / "bundle.json").read_text())["classes"] == ["yes", "no"]
    predictions = pd.read_parquet(tmp_path / "reports" / "test_predictions.parquet")
    assert "prob_no" in predictions and "prob_yes" not in predictions
    aligned = pd.read_parquet(tmp_path / "data" / "aligned" / "aligned.parquet").set_index("row_id")
    truth = (aligned.loc[predictions["row_id"], "target"] == "no").to_numpy()
    assert predictions["prob_no"][truth].mean() > predictions["prob_no"][~truth].mean() + 0.3
    assert report["test"]["auc"] > 0.8
    assert "Positive class: **`no`**" in (tmp_path / "reports" / "report.md").read_text()
