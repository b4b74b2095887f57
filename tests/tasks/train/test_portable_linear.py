"""The portable linear baseline predicts exactly what the fitted scikit-learn pipeline does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.config import ColumnsConfig
from tasks.data.align import SPLIT
from tasks.errors import BundleError
from tasks.train import sklearn_baseline
from tasks.train.portable_linear import META, WEIGHTS, read_linear, write_linear
from tasks.train.sklearn_baseline import predict_linear, tune_linear_member
from tests.tasks.train.test_sklearn_baseline import COLUMNS, MULTICLASS_ORDER, aligned_table


@pytest.mark.parametrize(
    ("task", "classes"),
    [("binary", ("no", "yes")), ("multiclass", MULTICLASS_ORDER), ("regression", ())],
)
def test_portable_predictions_equal_the_pipeline(task: str, classes: tuple[str, ...], tmp_path: Path) -> None:
    aligned = aligned_table(task)
    aligned.loc[aligned.index[:5], "price"] = np.nan  # the imputer and its indicator take part
    aligned.loc[aligned.index[5], "colour"] = "violet"  # a category never seen in train
    # Second columns that sort before the first: their blocks must stay in feature order.
    aligned["a_size"] = aligned["colour"].map({"red": "S", "blue": "M"}).astype("string")
    aligned["a_note"] = aligned["title"].str.split().str[0]
    columns = ColumnsConfig(categorical=["colour", "a_size"], numeric=["price"], text=["title", "a_note"])
    _, linear = tune_linear_member(aligned, columns, task, classes)

    # the same pipeline, fitted the baseline's way, predicts the reference numbers
    roles = sklearn_baseline._usable_columns(aligned, columns)
    frame = sklearn_baseline.clean_frame(aligned, roles)
    target, classes_found = sklearn_baseline.encode_target(aligned["target"], task, classes or None)
    split = aligned[SPLIT].to_numpy()
    parts = {s: (frame[split == s], target[split == s]) for s in ("train", "val")}
    n_classes = len(classes_found) if task == "multiclass" else 2
    _, pipeline = sklearn_baseline._tuned_linear(task, roles, parts, n_classes)
    expected = sklearn_baseline._predict(pipeline, frame, task, n_classes)

    np.testing.assert_allclose(predict_linear(linear, aligned), expected, rtol=1e-9, atol=1e-9)
    write_linear(tmp_path, linear)
    np.testing.assert_allclose(predict_linear(read_linear(tmp_path), aligned), expected, rtol=1e-9, atol=1e-9)
    if task != "regression":
        assert expected.std() > 0.05  # a model that predicts a constant would pass trivially


def test_an_edited_linear_model_is_refused(tmp_path: Path) -> None:
    write_linear(tmp_path, tune_linear_member(aligned_table("binary"), COLUMNS, "binary", ("no", "yes"))[1])
    weights = bytearray((tmp_path / WEIGHTS).read_bytes())
    weights[-1] ^= 1
    (tmp_path / WEIGHTS).write_bytes(bytes(weights))
    with pytest.raises(BundleError, match="digest"):
        read_linear(tmp_path)
    write_linear(tmp_path, tune_linear_member(aligned_table("binary"), COLUMNS, "binary", ("no", "yes"))[1])
    meta = (tmp_path / META).read_text().replace('"binary"', '"regression"')
    (tmp_path / META).write_text(meta)
    with pytest.raises(BundleError, match="digest"):
        read_linear(tmp_path)
