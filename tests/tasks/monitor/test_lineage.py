"""A bundle's lineage: which rows it saw, by id and content, kept with it and refused when edited.

Issue 24: the monitor had no way to know which rows the served model learned from, so its
reference was whatever the last run aligned and its batch held the train rows themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.errors import BundleError, DataError
from tasks.monitor.rows import model_reference, unseen_rows
from tasks.schema import ID, SPLIT
from tasks.serve.promotion import decide, promote, resolve_model_dir
from tasks.train.bundle import META, verify_bundle
from tasks.train.lineage import LINEAGE, read_lineage
from tests.tasks.monitor.project import items, run_align, write_model, write_project


@pytest.fixture()
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, pd.DataFrame]:
    """A bundle trained on 300 aligned rows; the project as the working directory."""
    monkeypatch.chdir(tmp_path)
    params = write_project(tmp_path, items(300))
    aligned = run_align(tmp_path, params)
    return write_model(tmp_path / "models", aligned, params), aligned


def _lineage(bundle: Path):  # noqa: ANN202 - the Lineage the bundle recorded
    return read_lineage(bundle, verify_bundle(bundle).lineage)


def test_the_lineage_holds_every_row_with_the_split_the_model_saw(trained: tuple[Path, pd.DataFrame]) -> None:
    bundle, aligned = trained
    lineage = _lineage(bundle)
    pairs = list(zip(lineage.rows[ID], lineage.rows[SPLIT], strict=True))
    assert pairs == list(zip(aligned[ID], aligned[SPLIT], strict=True))
    assert verify_bundle(bundle).lineage["split"]["method"] == "hash"


def test_a_row_edited_since_training_counts_as_unseen(trained: tuple[Path, pd.DataFrame]) -> None:
    bundle, aligned = trained
    edited = aligned.copy()
    edited.loc[5, "price"] += 1.0
    assert unseen_rows(edited, _lineage(bundle))[ID].tolist() == [aligned.loc[5, ID]]


def test_an_edited_lineage_file_is_refused(trained: tuple[Path, pd.DataFrame]) -> None:
    bundle, aligned = trained
    aligned.head(10)[[ID, SPLIT]].assign(digest=0).to_parquet(bundle / LINEAGE)
    with pytest.raises(BundleError, match="lineage.parquet: changed after the bundle was written"):
        _lineage(bundle)


def test_the_lineage_record_is_covered_by_the_bundle_digest(trained: tuple[Path, pd.DataFrame]) -> None:
    bundle, _ = trained
    data = json.loads((bundle / META).read_text())
    data["lineage"]["sha256"] = "0" * 64
    (bundle / META).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="edited after the bundle was written"):
        verify_bundle(bundle)


def test_the_registry_keeps_the_lineage_of_each_version(trained: tuple[Path, pd.DataFrame]) -> None:
    bundle, aligned = trained
    promote(Path("registry"), bundle, {}, decide("auc", 0.8, None, 0.0))
    promoted = resolve_model_dir(Path("registry"))
    assert len(_lineage(promoted).rows) == len(aligned)


def test_a_bundle_without_lineage_takes_the_aligned_train_rows_and_says_so(
    trained: tuple[Path, pd.DataFrame],
) -> None:
    """Bundles trained before lineage was kept still get a reference: data/aligned's, as before."""
    _, aligned = trained
    found = model_reference(aligned, None, "old-models", "data/aligned/aligned.parquet")
    assert len(found.train) == int((aligned[SPLIT] == "train").sum())
    assert found.notes == [
        "old-models records no lineage (trained before it was kept): its rows are taken as "
        "data/aligned/aligned.parquet's"
    ]


def test_none_of_the_models_rows_left_is_a_one_line_error(trained: tuple[Path, pd.DataFrame]) -> None:
    bundle, aligned = trained
    elsewhere = aligned.assign(**{ID: aligned[ID] + "-renamed"})
    with pytest.raises(DataError, match=r"none of the \d+ train rows of models are in the aligned table"):
        model_reference(elsewhere, _lineage(bundle), "models", "data/aligned/aligned.parquet")


def test_a_refit_models_val_rows_are_reference_rows_and_only_test_rows_are_held_out(
    trained: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    """After a refit (train.refit) the model learned the val rows: the monitor must not take them
    as rows it never fitted, and CBPE calibrates on the test rows alone."""
    bundle, aligned = trained
    plain = model_reference(aligned, _lineage(bundle), "models", "data/aligned/aligned.parquet")
    assert set(plain.train[SPLIT]) == {"train"} and set(plain.held_out[SPLIT]) == {"val", "test"}

    params = write_project(tmp_path, items(300))
    refit = write_model(tmp_path / "refit", aligned, params, fitted=("train", "val"))
    lineage = _lineage(refit)
    assert lineage.fitted == ("train", "val")
    found = model_reference(aligned, lineage, "refit", "data/aligned/aligned.parquet")
    assert set(found.train[SPLIT]) == {"train", "val"} and set(found.held_out[SPLIT]) == {"test"}
    assert len(found.train) + len(found.held_out) == len(aligned)


def test_a_lineage_record_without_fitted_splits_learned_from_train_and_a_bad_one_is_refused(
    trained: tuple[Path, pd.DataFrame],
) -> None:
    bundle, _ = trained
    record = dict(verify_bundle(bundle).lineage)
    del record["fitted"]  # a bundle written before refit existed
    assert read_lineage(bundle, record).fitted == ("train",)
    for bad in (["val"], ["train", "holdout"], "train"):
        with pytest.raises(BundleError, match="names no valid fitted splits"):
            read_lineage(bundle, {**record, "fitted": bad})
