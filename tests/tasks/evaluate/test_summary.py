"""The headline metrics DVC shows, the report's verdict, the majority baseline and the leaderboard.

The headline and the leaderboard are built from metrics_report's real output on small seeded
predictions; the verdict cases from constructed intervals, one per outcome. The leaderboard
command on files a real evaluate wrote is in test_flow.py (it reuses that module's
trained model).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.evaluate.evaluation import metrics_report, prior_name, prior_predictions
from tasks.evaluate.leaderboard import COLUMNS, format_leaderboard, read_leaderboard
from tasks.evaluate.report import verdict_sentence
from tasks.evaluate.summary import (
    BETTER,
    NO_DIFFERENCE,
    WORSE,
    best_baseline,
    headline,
    judge,
    leaderboard_table,
    verdict,
)
from tasks.scores.metrics import compute_metrics
from tasks.scores.model_names import FUSED, FUSED_HEAD, MAJORITY, SKLEARN
from tests.conftest import REPO

MODALITIES = ("tabular", "text", "image", "audio")
HEADLINE_LIMIT = 30


def flatten(data: dict, prefix: str = "") -> dict[str, object]:
    """Nested keys joined with dots, as `dvc exp show` and `dvc metrics diff` make columns of them."""
    flat: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _detail(task: str, modalities: tuple[str, ...], rows: int = 120) -> dict:
    """metrics_report's real output for a final model, its fused head, each modality, sklearn and
    the prior baseline, with every modality ablated: the most a detail dict ever holds."""
    rng = np.random.default_rng(0)
    if task == "multiclass":
        y = rng.integers(0, 3, size=rows)
        guess = lambda: rng.dirichlet(np.ones(3), size=rows)  # noqa: E731
    elif task == "multilabel":
        y = rng.integers(0, 2, size=(rows, 4))
        guess = lambda: rng.random((rows, 4))  # noqa: E731
    elif task == "binary":
        y = rng.integers(0, 2, size=rows).astype(np.float32)
        guess = lambda: rng.random(rows)  # noqa: E731
    else:
        y = rng.normal(size=rows)
        guess = lambda: y + rng.normal(size=rows)  # noqa: E731
    predictions = {FUSED: guess(), FUSED_HEAD: guess(), SKLEARN: guess(), **{m: guess() for m in modalities}}
    predictions[prior_name(task)] = prior_predictions(task, y, rows, 3)
    ablation = {m: guess() for m in modalities}
    return metrics_report(task, y, predictions, ablation, {"train": 0, "val": 0, "test": rows}, resamples=30)


# --- the headline: what DVC shows -------------------------------------------------------


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
def test_the_headline_has_at_most_30_columns_in_dvc_exp_show(task: str) -> None:
    """The worst case the brief names is multiclass with 3 modalities; every task with all 4 is worse."""
    detail = _detail(task, MODALITIES)
    assert len(flatten(detail)) > 2 * HEADLINE_LIMIT  # the detail: what used to make ~260 columns
    assert len(flatten(headline(detail))) <= HEADLINE_LIMIT


def test_the_headline_holds_the_final_model_each_baseline_and_the_gap_to_the_best() -> None:
    detail = _detail("multiclass", ("tabular", "text", "image"))
    shown = headline(detail)
    assert shown["metric"] == "accuracy" and shown["final"] == detail["test"]["accuracy"]
    assert {"tabular", "text", "image", SKLEARN, MAJORITY} <= set(shown)
    best = shown["best_baseline"]
    assert shown["final_minus_best"] == pytest.approx(shown["final"] - shown[best])
    gap = detail["intervals"][f"fused_minus_{best}"]
    assert (shown["low"], shown["high"]) == (gap["low"], gap["high"])


def test_the_headline_and_the_verdict_name_the_same_best_baseline() -> None:
    detail = _detail("regression", ("tabular", "text"))
    assert headline(detail)["best_baseline"] == verdict(detail).baseline == best_baseline(detail)


def test_the_best_baseline_is_picked_on_test_among_modalities_sklearn_and_majority() -> None:
    detail = {
        "primary_metric": "accuracy",
        "intervals": {"higher_is_better": True},
        "baselines": {
            "text": {"accuracy": 0.31},
            SKLEARN: {"accuracy": 0.30},
            MAJORITY: {"accuracy": 0.35},  # an imbalanced target: the class count wins
            FUSED_HEAD: {"accuracy": 0.9},  # part of the final model, never a baseline
            "tabular": {"accuracy": math.nan},  # undefined never wins
        },
    }
    assert best_baseline(detail) == MAJORITY


def test_for_an_error_metric_the_lowest_baseline_is_the_best() -> None:
    detail = {
        "primary_metric": "rmse",
        "intervals": {"higher_is_better": False},
        "baselines": {"text": {"rmse": 2.0}, SKLEARN: {"rmse": 1.5}, "mean": {"rmse": 3.0}},
    }
    assert best_baseline(detail) == SKLEARN


def test_dvc_shows_only_the_headline_as_metrics() -> None:
    """member_seconds.json and the detail are plain outs: they add no `dvc exp show` columns."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = [
        next(iter(m)) if isinstance(m, dict) else m for s in stages.values() for m in s.get("metrics", [])
    ]
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages["evaluate"]["outs"]]
    assert declared == ["reports/metrics.json"]
    assert {"reports/evaluation.json", "reports/leaderboard.csv"} <= set(outs)


# --- the verdict ------------------------------------------------------------------------


def _judged(low: float, high: float, higher: bool = True) -> dict:
    """A detail whose best baseline is sklearn, with the given interval of final minus it."""
    metric = "accuracy" if higher else "rmse"
    return {
        "primary_metric": metric,
        "test": {metric: 0.40},
        "baselines": {SKLEARN: {metric: 0.38}, MAJORITY: {metric: 0.20 if higher else 9.0}},
        "intervals": {
            "higher_is_better": higher,
            "level": 0.95,
            f"fused_minus_{SKLEARN}": {"low": low, "high": high},
        },
    }


@pytest.mark.parametrize(
    ("low", "high", "higher", "outcome"),
    [
        (0.01, 0.05, True, BETTER),
        (-0.05, -0.01, True, WORSE),
        (-0.02, 0.03, True, NO_DIFFERENCE),
        (0.0, 0.03, True, NO_DIFFERENCE),  # touching 0 is not clear of it
        (-0.05, -0.01, False, BETTER),  # an error: below 0 is better
        (0.01, 0.05, False, WORSE),
    ],
)
def test_the_verdict_follows_which_side_of_zero_the_interval_lies(
    low: float, high: float, higher: bool, outcome: str
) -> None:
    assert verdict(_judged(low, high, higher)).outcome == outcome


def test_an_undefined_interval_is_no_verdict_either_way() -> None:
    assert judge(math.nan, 0.1, True) not in (BETTER, WORSE, NO_DIFFERENCE)


@pytest.mark.parametrize(
    ("low", "high", "words"),
    [
        (0.01, 0.05, "is better than"),
        (-0.05, -0.01, "is worse than"),
        (-0.02, 0.03, "shows no detectable difference from"),
    ],
)
def test_the_verdict_sentence_names_the_outcome_the_baseline_and_the_interval(
    low: float, high: float, words: str
) -> None:
    sentence = verdict_sentence(verdict(_judged(low, high)), "logistic_regression")
    assert sentence == (
        f"The final model's accuracy 0.400 {words} the best baseline, scikit-learn (logistic_regression) "
        f"(0.380): final minus it +0.020, 95 % interval [{low:+.3f}, {high:+.3f}]."
    )


# --- the majority / mean baseline -------------------------------------------------------


def test_the_majority_baseline_predicts_the_train_class_frequencies() -> None:
    train = np.array([0, 0, 1, 2, 0, 1])
    guess = prior_predictions("multiclass", train, rows=2, classes=4)
    assert guess.tolist() == [[0.5, 1 / 3, 1 / 6, 0.0]] * 2
    assert compute_metrics("multiclass", np.array([0, 2]), guess)["accuracy"] == 0.5  # always class 0


def test_the_binary_majority_baseline_is_the_positive_share() -> None:
    guess = prior_predictions("binary", np.array([1, 0, 0, 0], dtype=np.float32), rows=3)
    assert guess.tolist() == [0.25] * 3
    assert compute_metrics("binary", np.array([0, 1, 0]), guess)["auc"] == 0.5


def test_the_mean_baseline_of_regression_is_the_train_mean() -> None:
    guess = prior_predictions("regression", np.array([1.0, 2.0, 6.0]), rows=2)
    assert prior_name("regression") == "mean" and guess.tolist() == [3.0, 3.0]
    assert compute_metrics("regression", np.array([3.0, 5.0]), guess)["rmse"] == pytest.approx(math.sqrt(2))


def test_the_multilabel_majority_baseline_is_each_labels_share() -> None:
    train = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])
    assert prior_predictions("multilabel", train, rows=1).tolist() == [[0.75, 0.25]]


# --- the leaderboard --------------------------------------------------------------------


def _with_members(detail: dict) -> dict:
    """The detail as evaluate completes it: an ensemble of fused + text, what train tried, val scores."""
    primary = detail["primary_metric"]
    detail = {**detail, "members": {}}
    detail["ensemble"] = {
        "members": {FUSED: 0.7, "text": 0.3},
        "tried": [
            {"name": FUSED, "kind": "head", "status": "trained", "val": 0.5, "seconds": 2.0},
            {"name": "text", "kind": "head", "status": "trained", "val": 0.4, "seconds": 1.0},
            {"name": "head_gated", "kind": "head", "head": "gated", "seed": 0, "status": "trained",
             "val": 0.45, "seconds": 3.0},
            {"name": "sklearn_linear", "kind": "sklearn", "status": "trained", "val": 0.42, "seconds": 0.5},
        ],
    }  # fmt: skip
    for i, entry in enumerate(detail["ensemble"]["tried"]):
        detail["members"][entry["name"]] = {primary: 0.1 * (i + 1)}
    detail["val"] = {FUSED: 0.55, FUSED_HEAD: 0.5, SKLEARN: 0.33, MAJORITY: 0.2}
    return detail


def test_the_leaderboard_lists_every_trained_model_best_test_score_first() -> None:
    detail = _with_members(_detail("multiclass", ("tabular", "text")))
    board = leaderboard_table(detail, sklearn_seconds=4.0)
    assert list(board.columns) == COLUMNS
    assert set(board["model"]) == {"final", FUSED, "text", "head_gated", "sklearn_linear", SKLEARN, MAJORITY}
    assert board["test"].is_monotonic_decreasing  # accuracy: higher first
    final = board.set_index("model").loc["final"]
    assert final["seconds"] == 3.0 and final["val"] == 0.55  # the members' seconds together
    assert board.set_index("model").loc["head_gated", "weight"] == 0.0


def test_the_leaderboard_file_prints_as_an_aligned_table(tmp_path: Path) -> None:
    detail = _with_members(_detail("regression", ("tabular", "text")))
    board = leaderboard_table(detail)
    path = tmp_path / "leaderboard.csv"
    board.to_csv(path, index=False)
    lines = format_leaderboard(read_leaderboard(path)).splitlines()
    assert lines[0].split() == ["model", "role", "weight", "val", "rmse", "test", "rmse", "train", "s"]
    assert [line.split()[0] for line in lines[1:]] == board["model"].tolist()  # evaluate's order
    under = lines[0].index("test rmse") + len("test rmse")  # numbers end under their header
    assert all(
        line[:under].endswith(f"{value:.3f}") for line, value in zip(lines[1:], board["test"], strict=True)
    )


def test_a_file_that_is_not_a_leaderboard_is_one_clear_error(tmp_path: Path) -> None:
    from tasks.errors import DataError

    path = tmp_path / "leaderboard.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a leaderboard"):
        read_leaderboard(path)
