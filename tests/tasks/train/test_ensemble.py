"""Greedy ensemble selection on val, and the ensemble file that guards its members."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.errors import BundleError
from tasks.evaluate.evaluation import primary_score
from tasks.train.ensemble import blend, select_ensemble
from tasks.train.members import ENSEMBLE, read_ensemble, write_ensemble


def _complementary(rows: int = 400, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Two members that each see half the signal, and one that is noise."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    y = (a + b + 0.3 * rng.normal(size=rows) > 0).astype(np.float32)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    return y, {"a": sigmoid(2 * a), "b": sigmoid(2 * b), "noise": sigmoid(rng.normal(size=rows))}


def test_selection_combines_complementary_members_and_beats_each_on_val() -> None:
    y, predictions = _complementary()
    ensemble = select_ensemble("binary", y, predictions)
    assert set(ensemble.weights) >= {"a", "b"} and "noise" not in ensemble.weights
    assert sum(ensemble.weights.values()) == pytest.approx(1.0)
    best_single = max(ensemble.member_val.values())
    assert ensemble.val_score > best_single + 0.02
    assert primary_score("binary", y, blend(predictions, ensemble.weights)) == pytest.approx(
        ensemble.val_score
    )


def test_selection_is_never_worse_than_the_best_member_and_is_deterministic() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=300)
    predictions = {name: rng.dirichlet(np.ones(3), size=300) for name in ("p", "q", "r")}
    first = select_ensemble("multiclass", y, predictions)
    assert first.val_score >= max(first.member_val.values())
    assert select_ensemble("multiclass", y, dict(reversed(predictions.items()))).weights == first.weights


def test_regression_selection_lowers_rmse() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=500)
    predictions = {"low": y + rng.normal(0, 1, 500) - 0.5, "high": y + rng.normal(0, 1, 500) + 0.5}
    ensemble = select_ensemble("regression", y, predictions)
    assert ensemble.val_score < min(ensemble.member_val.values()) - 0.1  # rmse: lower is better
    assert set(ensemble.weights) == {"low", "high"}


def test_a_member_changed_after_selection_is_refused(tmp_path: Path) -> None:
    member = tmp_path / "baselines" / "text"
    member.mkdir(parents=True)
    (member / "model.safetensors").write_bytes(b"weights")
    write_ensemble(tmp_path, {"members": {"text": 1.0}}, tried=[])
    assert read_ensemble(tmp_path)["members"] == {"text": 1.0}
    (member / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(BundleError, match="baselines/text/model.safetensors"):
        read_ensemble(tmp_path)
    data = json.loads((tmp_path / ENSEMBLE).read_text())
    data["members"] = {"text": -1}
    (tmp_path / ENSEMBLE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="positive weights"):
        read_ensemble(tmp_path)


def _sure_and_hedged(rows: int = 100) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Val rows 70 % negative: `sure` says 0.02 for all (accuracy 0.7, log loss 1.19), `hedged`
    says 0.5 (accuracy 0.3, since 0.5 counts as positive; log loss 0.69)."""
    y = (np.arange(rows) % 10 >= 7).astype(np.float32)
    return y, {"sure": np.full(rows, 0.02), "hedged": np.full(rows, 0.5)}


@pytest.mark.parametrize(("metric", "member"), [("accuracy", "sure"), ("log_loss", "hedged")])
def test_the_chosen_metric_picks_the_member(metric: str, member: str) -> None:
    y, predictions = _sure_and_hedged()
    ensemble = select_ensemble("binary", y, predictions, rounds=1, metric=metric)
    assert ensemble.weights == {member: 1.0}
    assert ensemble.to_json()["selected_by"] == f"val {metric}"
    assert ensemble.member_val["sure"] == pytest.approx(0.7 if metric == "accuracy" else 1.1877, abs=1e-3)


def test_a_metric_undefined_on_val_leaves_the_choice_to_the_loss() -> None:
    """One class in the val rows: AUC is undefined for every candidate, log loss still ranks them."""
    y = np.zeros(20, dtype=np.float32)
    predictions = {"right": np.full(20, 0.1), "wrong": np.full(20, 0.8)}
    ensemble = select_ensemble("binary", y, predictions, metric="auc")
    assert ensemble.weights == {"right": 1.0}


def test_bagged_weights_move_less_than_one_greedy_run_when_rows_are_added() -> None:
    """A weekly retrain adds 5 % val rows; the weights should follow the members, not the rows."""
    rng = np.random.default_rng(5)
    rows = 1_000
    signal = rng.normal(size=rows)
    y = (signal + rng.normal(size=rows) > 0).astype(np.float32)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    # Three members of about equal worth, each with noise of its own: the split between them is
    # what a few hundred rows cannot pin down.
    members = {name: sigmoid(signal + rng.normal(scale=0.8, size=rows)) for name in ("a", "b", "c")}
    moves: dict[int, list[float]] = {1: [], 16: []}
    for week in range(8):
        start, end = 0, 300 + 15 * week
        before = {name: p[start:end] for name, p in members.items()}
        after = {name: p[start : end + 15] for name, p in members.items()}
        for bags in moves:
            old = select_ensemble("binary", y[start:end], before, bags=bags).weights
            new = select_ensemble("binary", y[start : end + 15], after, bags=bags).weights
            moves[bags].append(sum(abs(old.get(n, 0.0) - new.get(n, 0.0)) for n in members))
    assert np.mean(moves[16]) < 0.75 * np.mean(moves[1]), moves  # measured: 0.095 against 0.137
