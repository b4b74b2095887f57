"""The scikit-learn baseline, fitted on aligned tables made by the real align step."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier

from tasks.config import ColumnsConfig, DataConfig
from tasks.data.align import ID, SPLIT, align
from tasks.errors import DataError
from tasks.scores.metrics import compute_metrics
from tasks.train.sklearn_baseline import SklearnBaseline, fit_sklearn_baseline

WORDS = ["lamp", "chair", "table", "shelf", "mug", "rug", "sofa", "desk"]


def aligned_table(task: str, rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """`title` carries the class through one word; `price` carries a regression target; the rest is noise."""
    rng = np.random.default_rng(seed)
    label = rng.choice(["gold", "iron", "wood"] if task == "multiclass" else ["no", "yes"], size=rows)
    filler = [" ".join(rng.choice(WORDS, size=4)) for _ in range(rows)]
    price = rng.normal(50, 10, size=rows)
    frame = pd.DataFrame(
        {
            "item_id": [f"i{i:04d}" for i in range(rows)],
            "label": price * 3 + 100 if task == "regression" else label,
            "title": [f"{f} {lab}" for f, lab in zip(filler, label, strict=True)],
            "colour": rng.choice(["red", "blue", None], size=rows),
            "price": price,
        }
    )
    for column in ("item_id", "title", "colour") + (() if task == "regression" else ("label",)):
        frame[column] = frame[column].astype("string")
    data = DataConfig.model_validate(
        {
            "sources": [{"path": "items.csv"}],
            "id": "item_id",
            "target": "label",
            "task": task,
            "columns": {"categorical": ["colour"], "numeric": ["price"], "text": ["title"]},
        }
    )
    aligned, _ = align(data, [("items.csv", frame)])
    return aligned


COLUMNS = ColumnsConfig(categorical=["colour"], numeric=["price"], text=["title"])
MULTICLASS_ORDER = ("wood", "gold", "iron")  # not sorted: columns must follow this order, not sklearn's

Fitted = tuple[pd.DataFrame, SklearnBaseline]


@pytest.fixture(scope="module")
def binary() -> Fitted:
    aligned = aligned_table("binary")
    return aligned, fit_sklearn_baseline(aligned, COLUMNS, "binary", ("no", "yes"))


@pytest.fixture(scope="module")
def multiclass() -> Fitted:
    aligned = aligned_table("multiclass")
    return aligned, fit_sklearn_baseline(aligned, COLUMNS, "multiclass", MULTICLASS_ORDER)


@pytest.fixture(scope="module")
def regression() -> Fitted:
    aligned = aligned_table("regression")
    return aligned, fit_sklearn_baseline(aligned, COLUMNS, "regression")


def _test_target(aligned: pd.DataFrame) -> pd.Series:
    return aligned.loc[aligned[SPLIT] == "test", "target"]


def test_learns_a_planted_text_signal(binary: Fitted) -> None:
    aligned, result = binary
    truth = (_test_target(aligned) == "yes").to_numpy(dtype=float)
    assert compute_metrics("binary", truth, result.test_predictions)["auc"] > 0.95


def test_the_candidate_is_chosen_on_validation_rows(binary: Fitted) -> None:
    _, result = binary
    best_on_val = max(result.candidates, key=lambda name: result.candidates[name]["val"]["auc"])
    assert result.selected == best_on_val and result.selected_by == "val auc"


def test_both_model_families_are_candidates(regression: Fitted) -> None:
    _, result = regression
    assert set(result.candidates) == {"ridge", "hist_gradient_boosting"}


def test_multiclass_probabilities_follow_the_given_class_order(multiclass: Fitted) -> None:
    aligned, result = multiclass
    truth = _test_target(aligned).map({c: i for i, c in enumerate(MULTICLASS_ORDER)}).to_numpy()
    assert np.mean(result.test_predictions.argmax(axis=1) == truth) > 0.9


def test_regression_predicts_on_the_target_scale(regression: Fitted) -> None:
    aligned, result = regression
    truth = _test_target(aligned).to_numpy(dtype=float)
    assert np.sqrt(np.mean((result.test_predictions - truth) ** 2)) < 0.2 * truth.std()


def test_test_ids_are_the_aligned_test_rows_in_order(binary: Fitted) -> None:
    aligned, result = binary
    assert result.test_ids.tolist() == aligned.loc[aligned[SPLIT] == "test", ID].tolist()


def test_a_text_column_with_no_values_is_left_out() -> None:
    aligned = aligned_table("regression")  # align refuses an empty column, so empty it afterwards
    aligned["title"], aligned["present__title"] = pd.NA, False
    result = fit_sklearn_baseline(aligned, COLUMNS, "regression")
    assert result.candidates["ridge"]["test"]["r2"] > 0.9  # price alone still predicts the target


def test_a_text_column_of_one_word_still_fits() -> None:
    aligned = aligned_table("regression")
    aligned["title"] = "note"  # a one-term vocabulary: nothing for the trees' SVD to reduce
    result = fit_sklearn_baseline(aligned, COLUMNS, "regression")
    assert result.candidates["hist_gradient_boosting"]["test"]["r2"] > 0.9


def test_images_only_is_a_data_error() -> None:
    with pytest.raises(DataError, match="tabular or text"):
        fit_sklearn_baseline(aligned_table("binary"), ColumnsConfig(image=["photo"]), "binary", ("no", "yes"))


def test_a_column_missing_from_the_aligned_table_is_a_data_error() -> None:
    columns = ColumnsConfig(numeric=["weight"], text=["title"])
    with pytest.raises(DataError, match="weight"):
        fit_sklearn_baseline(aligned_table("binary"), columns, "binary", ("no", "yes"))


def test_boosted_trees_are_tuned_on_val_like_the_linear_model(binary: Fitted) -> None:
    """Issue 14 §3.9: both families get three settings chosen on val, so neither wins by tuning alone."""
    from tasks.train.sklearn_baseline import LINEAR_STRENGTHS, TREE_SETTINGS

    _, result = binary
    trees = result.candidates["hist_gradient_boosting"]
    chosen = {k: trees[k] for k in ("learning_rate", "max_leaf_nodes")}
    assert any(chosen.items() <= settings.items() for settings in TREE_SETTINGS)
    assert len(TREE_SETTINGS) == len(LINEAR_STRENGTHS)


def test_a_large_train_split_is_sampled_and_the_report_says_so(binary: Fitted) -> None:
    """evaluate.baseline_max_rows: a seeded sample of train, the same one every run; val and test whole."""
    from tasks.evaluate.report import _sample_note

    aligned, whole = binary
    available = int((aligned[SPLIT] == "train").sum())
    sampled = fit_sklearn_baseline(aligned, COLUMNS, "binary", ("no", "yes"), max_rows=100)
    again = fit_sklearn_baseline(aligned, COLUMNS, "binary", ("no", "yes"), max_rows=100)
    assert (whole.train_rows, whole.train_rows_available) == (available, available)
    assert (sampled.train_rows, sampled.train_rows_available) == (100, available)
    np.testing.assert_array_equal(sampled.test_predictions, again.test_predictions)
    assert len(sampled.test_predictions) == len(whole.test_predictions)
    assert not np.allclose(sampled.test_predictions, whole.test_predictions)
    note = _sample_note({"train_rows": 100, "train_rows_available": available})
    assert f"seeded sample of 100 of the {available:,} train rows" in note
    assert _sample_note({"train_rows": available, "train_rows_available": available}) == ""


# --- evaluate.metric ---------------------------------------------------------------------


def _prior(positives: int, rows: int = 100) -> DummyClassifier:
    """A real fitted classifier that always says P(yes) = positives / rows."""
    y = np.r_[np.ones(positives), np.zeros(rows - positives)].astype(int)
    return DummyClassifier(strategy="prior").fit(np.zeros((rows, 1)), y)


@pytest.mark.parametrize(("metric", "setting"), [("accuracy", "sure"), ("log_loss", "hedged")])
def test_settings_are_tuned_on_the_chosen_metric(metric: str, setting: str) -> None:
    """Val rows 70 % negative: `sure` (P 0.02) is right more often, `hedged` (P 0.5) loses less log loss."""
    from tasks.train.sklearn_baseline import _best_on_val

    y_val = (np.arange(100) % 10 >= 7).astype(int)
    val = (pd.DataFrame({"x": np.zeros(100)}), y_val)
    fitted = [("sure", _prior(2)), ("hedged", _prior(50))]
    assert _best_on_val("binary", val, 2, fitted, metric)[0] == setting


def test_the_baseline_reports_the_metric_it_was_chosen_on(multiclass: Fitted) -> None:
    aligned, _ = multiclass
    result = fit_sklearn_baseline(
        aligned, COLUMNS, "multiclass", MULTICLASS_ORDER, metric="balanced_accuracy"
    )
    val = {name: c["val"]["balanced_accuracy"] for name, c in result.candidates.items()}
    assert result.selected_by == "val balanced_accuracy" and result.selected == max(val, key=val.__getitem__)
    assert all("balanced_accuracy" in c["test"] for c in result.candidates.values())
