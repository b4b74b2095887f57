"""Columns added, removed, retyped or renamed since the served model was trained: named findings.

Issue 23, class 3: after params.yaml gained a numeric column, `fuseline monitor` failed with
`KeyError: 'present__score'` (the reference rows were aligned without it). Every schema
change must come back as a finding naming the column, never a KeyError; `fuseline predict`
with such an old bundle, and the same model on rows aligned without a column it reads (champion
re-scoring), must name a missing column in one line. The model here was trained
on price (numeric) and category (categorical); the sources hold spare columns the changed
params.yaml declares, and 100 rows the model has not seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from tasks.config import load_params
from tasks.errors import DataError
from tasks.features.cache import FeatureCache
from tasks.monitor.schema import compare_schemas, roles_of
from tasks.serve.predict import file_roots, load_predictor, read_new_rows
from tests.tasks.monitor.project import COLUMNS, items, run_align, write_model, write_project

CHANGES: dict[str, tuple[dict[str, list[str]], dict[str, str]]] = {
    # name: (today's columns, {column: what the finding says})
    "add numeric": ({**COLUMNS, "numeric": ["price", "score"]}, {"score": "added"}),
    "add categorical": ({**COLUMNS, "categorical": ["category", "colour"]}, {"colour": "added"}),
    "remove": ({"numeric": ["price"]}, {"category": "removed"}),
    "retype numeric to text": ({**COLUMNS, "numeric": [], "text": ["price"]}, {"price": "numeric -> text"}),
    "rename": ({"numeric": ["price"], "categorical": ["kind"]}, {"category": "removed", "kind": "added"}),
}


@pytest.fixture()
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """models/ trained on 300 rows with COLUMNS; the sources have grown by 100 rows since."""
    monkeypatch.chdir(tmp_path)
    params = write_project(tmp_path, items(300))
    write_model(tmp_path / "models", run_align(tmp_path, params), params)
    return tmp_path


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_schema_change_is_a_named_finding(prefect_api: str, trained: Path, change: str) -> None:
    from flows.monitor import monitor

    columns, expected = CHANGES[change]
    write_project(trained, pd.concat([items(300), items(100, start=300, seed=1)]), columns)
    summary: dict[str, Any] = monitor()
    findings = {c["column"]: c["detail"] for c in summary["checks"] if c["aspect"] == "schema"}
    assert set(findings) == set(expected) and set(expected) <= set(summary["drifted_columns"])
    assert all(words in findings[column] for column, words in expected.items()), findings


def test_unchanged_columns_are_still_compared_beside_a_finding(prefect_api: str, trained: Path) -> None:
    from flows.monitor import monitor

    write_project(trained, pd.concat([items(300), items(100, start=300, seed=1)]), CHANGES["add numeric"][0])
    summary = monitor()
    compared = {(c["column"], c["aspect"]) for c in summary["checks"]}
    assert {("price", "distribution"), ("category", "unseen"), ("prediction", "score")} <= compared


def test_a_column_the_reference_rows_lack_is_a_finding(trained: Path) -> None:
    """Declared alike by the model and params.yaml, but aligned without it: named, not a KeyError."""
    params = load_params(trained / "params.yaml")
    aligned = pd.read_parquet(trained / "data" / "aligned" / "aligned.parquet")
    tables = {"reference": aligned.drop(columns=["price", "present__price"]), "batch": aligned}
    schema = compare_schemas(
        roles_of(params.data.columns), params.data, tables, "since the model was trained"
    )
    assert [(c.column, c.detail) for c in schema.findings] == [
        ("price", "not in the reference rows as a numeric column: not compared")
    ]
    assert schema.compared.columns.all() == ["category"]


def _new_rows(trained: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """`fuseline predict`'s reading and prediction of `rows` with the model trained before the change."""
    rows.to_csv(trained / "new.csv", index=False)
    cache = FeatureCache(trained / ".cache")
    predictor = load_predictor(trained / "models", cache)
    roots = file_roots(predictor.data)
    read = read_new_rows(trained / "new.csv", predictor.data, roots)
    return predictor.predict(read, roots, cache, torch.device("cpu"))


def test_predict_with_an_old_bundle_ignores_an_added_column(trained: Path) -> None:
    predictions = _new_rows(trained, items(20, start=400))  # score, colour and kind are extra
    assert len(predictions) == 20 and predictions["prob_yes"].between(0, 1).all()


def test_predict_with_an_old_bundle_names_a_removed_column(trained: Path) -> None:
    with pytest.raises(DataError, match="column 'category', which the model was trained on, is missing"):
        _new_rows(trained, items(20, start=400).drop(columns=["category"]))


def test_predict_with_an_old_bundle_reads_a_retyped_column_as_the_model_did(trained: Path) -> None:
    """Prices written as words are not numbers: the model's own reading makes them missing, no error."""
    rows = items(20, start=400).astype({"price": str})
    rows.loc[:4, "price"] = "cheap"
    predictions = _new_rows(trained, rows)
    assert len(predictions) == 20


def test_rows_aligned_without_a_column_the_model_reads_are_refused_naming_it(trained: Path) -> None:
    """The path champion re-scoring takes: the promoted model on today's aligned table."""
    today = run_align(trained, write_project(trained, items(300), CHANGES["remove"][0]))
    cache = FeatureCache(trained / ".cache")
    predictor = load_predictor(trained / "models", cache)
    with pytest.raises(DataError, match="column 'category': the model was trained on this column"):
        predictor.predictions(today, file_roots(predictor.data), cache, torch.device("cpu"))
