"""Stacking (`train.combine`): the pooled combiner, its file form, and the out-of-fold choice."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tasks.errors import BundleError
from tasks.scores.metrics import score
from tasks.train.ensemble import select_ensemble
from tasks.train.members import ENSEMBLE, _stacker
from tasks.train.stacking import Stacker, combine, fit_stacker


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _shifted(rows: int = 600, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Two members that see the signal but both lean towards class 0 (a prior both got wrong),
    and one that is noise: averaging keeps the lean, a bias removes it."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    y = (a + b + 0.3 * rng.normal(size=rows) > 0).astype(np.int64)
    return y, {
        "a": _sigmoid(2 * (a + b) - 2.5),
        "b": _sigmoid(1.5 * (a + b) + 0.5 * rng.normal(size=rows) - 2.5),
        "noise": _sigmoid(rng.normal(size=rows)),
    }


def test_the_pool_corrects_a_shared_lean_and_leaves_noise_out() -> None:
    y, predictions = _shifted()
    stacker = fit_stacker("binary", y, predictions)
    pooled = stacker.predict(predictions)
    assert pooled.shape == y.shape and np.all((pooled > 0) & (pooled < 1))
    best_member = max(score("binary", "accuracy", y, p) for p in predictions.values())
    assert score("binary", "accuracy", y, pooled) > best_member + 0.1
    shares = stacker.shares()
    assert shares.get("noise", 0.0) < 0.05 and shares["a"] > shares.get("noise", 0.0)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_a_multiclass_pool_gives_probabilities_and_never_drops_every_member() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, size=300)
    truth = np.eye(4)[y] * 2.0 + rng.normal(size=(300, 4))
    informed = np.exp(truth) / np.exp(truth).sum(axis=1, keepdims=True)
    predictions = {"informed": informed, "flat": np.full((300, 4), 0.25)}
    stacker = fit_stacker("multiclass", y, predictions)
    pooled = stacker.predict(predictions)
    assert pooled.shape == (300, 4) and np.allclose(pooled.sum(axis=1), 1.0)
    assert "informed" in stacker.members
    assert score("multiclass", "log_loss", y, pooled) <= score("multiclass", "log_loss", y, informed) + 1e-6


def test_a_regression_pool_recovers_the_mix() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=800), rng.normal(size=800)
    y = 0.7 * a + 0.3 * b + 1.0
    stacker = fit_stacker("regression", y, {"a": a, "b": b})
    assert stacker.weights == pytest.approx((0.7, 0.3), abs=0.02)
    assert stacker.bias[0] == pytest.approx(1.0, abs=0.02)
    assert stacker.predict({"a": a, "b": b}) == pytest.approx(y, abs=0.05)
    chosen = combine("regression", y, {"a": a, "b": b}, mode="stacking")
    assert "by squared error" in chosen["method"] and chosen["stacker"]["kind"] == "linear pool"


def test_the_file_form_predicts_the_same_and_bad_files_are_refused(tmp_path: Path) -> None:
    y, predictions = _shifted()
    stacker = fit_stacker("binary", y, predictions)
    again = Stacker.from_json("binary", json.loads(json.dumps(stacker.to_json())))
    assert np.array_equal(again.predict(predictions), stacker.predict(predictions))
    one_too_many = [1.0] * (len(stacker.members) + 1)
    zeros = [0.0] * len(stacker.members)
    for broken, message in [
        ({**stacker.to_json(), "weights": [-1.0] * len(stacker.members)}, "positive"),
        ({**stacker.to_json(), "weights": [float("nan")] * len(stacker.members)}, "finite"),
        ({**stacker.to_json(), "weights": one_too_many}, "one finite number per member"),
        ({**stacker.to_json(), "bias": []}, "bias"),
    ]:
        with pytest.raises(ValueError, match=message):
            Stacker.from_json("binary", broken)
    with pytest.raises(ValueError, match="not multilabel"):
        Stacker.from_json("multilabel", stacker.to_json())
    # ensemble.json's members must be exactly what the stacker reads, so none is loaded in vain
    # or left out of the digests
    binary = SimpleNamespace(task="binary", classes=("no", "yes"))
    ensemble = {"members": {"a": 1.0}, "stacker": stacker.to_json()}
    with pytest.raises(BundleError, match=f"{ENSEMBLE}: 'stacker.members' must name exactly"):
        _stacker(tmp_path, binary, ensemble)  # type: ignore[arg-type]
    with pytest.raises(BundleError, match="positive"):
        _stacker(tmp_path, binary, {**ensemble, "stacker": {**stacker.to_json(), "weights": zeros}})  # type: ignore[arg-type]
    three = SimpleNamespace(task="multiclass", classes=("a", "b", "c"))  # a bias per class: 3, not 2
    with pytest.raises(BundleError, match="'stacker.bias' must hold 3 numbers"):
        _stacker(tmp_path, three, {**ensemble, "members": stacker.shares()})  # type: ignore[arg-type]


def test_a_pool_of_the_fused_head_alone_is_not_the_fused_head() -> None:
    """Its bias and total weight rescale the head's probabilities, so evaluate scores both."""
    from tasks.train.members import FinalModel

    pool = Stacker("binary", ("fused",), (1.7,), (0.0, 0.4))
    assert not FinalModel({}, {"fused": 1.0}, pool).is_fused_head
    assert FinalModel({}, {"fused": 1.0}).is_fused_head


def test_caruana_is_the_default_and_unchanged() -> None:
    y, predictions = _shifted()
    assert combine("binary", y, predictions) == select_ensemble("binary", y, predictions).to_json()


def test_auto_takes_the_pool_only_where_it_wins_out_of_fold() -> None:
    y, predictions = _shifted()
    chosen = combine("binary", y, predictions, metric="accuracy", mode="auto")  # a lean costs accuracy
    assert chosen["combined_by"].startswith("stacking")
    oof = chosen["out_of_fold"]
    assert oof["stacking"] > oof["caruana"] and oof["folds"] == 5 and oof["metric"] == "accuracy"
    assert set(chosen["members"]) == set(chosen["stacker"]["members"])
    # many classes on few val rows: a bias per class overfits, so out of fold the pool often
    # loses; the choice follows the out-of-fold scores wherever they differ
    for seed in range(6):
        labels, members = _many_classes_few_rows(seed)
        kept = combine("multiclass", labels, members, metric="accuracy", mode="auto")
        oof = kept["out_of_fold"]
        if oof["caruana"] != oof["stacking"]:
            assert kept["combined_by"].startswith("stacking") == (oof["stacking"] > oof["caruana"])
        if kept["combined_by"].startswith("caruana"):
            expected = select_ensemble("multiclass", labels, members, metric="accuracy").weights
            assert "stacker" not in kept and kept["members"] == expected
    labels, members = _many_classes_few_rows(5)
    assert combine("multiclass", labels, members, metric="accuracy", mode="auto")["combined_by"].startswith(
        "caruana"
    )


def _many_classes_few_rows(seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=60)
    logits = np.eye(10)[labels] * 1.5 + rng.normal(size=(60, 10))
    informed = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, {"informed": informed, "noise": rng.dirichlet(np.ones(10), size=60)}


def test_stacking_does_not_apply_to_multilabel_or_a_handful_of_rows() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(50, 3))
    multilabel = combine("multilabel", y, {"m": rng.random((50, 3))}, mode="stacking")
    assert "stacker" not in multilabel and "multilabel" in multilabel["combined_by"]
    few = combine("binary", np.array([0, 1, 0, 1]), {"m": np.array([0.2, 0.8, 0.3, 0.6])}, mode="auto")
    assert "stacker" not in few and "4 val rows" in few["combined_by"]


@pytest.mark.slow
def test_a_stacked_model_is_trained_evaluated_and_served_as_one(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.combine: stacking through the real train and evaluate flows: ensemble.json holds the
    pool, evaluate scores the pooled predictions, and the final model prediction loads serves them."""
    import pandas as pd
    import yaml

    from flows.evaluate import evaluate, rows_of
    from flows.train import train
    from tasks.paths import Layout
    from tasks.train.assemble import load_feature_set
    from tasks.train.members import load_final_model
    from tests.tasks.evaluate.test_flow import _params, _write_inputs

    monkeypatch.chdir(tmp_path)
    _write_inputs(tmp_path)
    raw = _params()
    raw["train"] = {**raw["train"], "epochs": 4, "patience": 4, "combine": "stacking"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    train(params_path="params.yaml")
    report = evaluate(params_path="params.yaml")

    ensemble = json.loads((tmp_path / "models" / ENSEMBLE).read_text())
    assert ensemble["combined_by"] == "stacking (train.combine)"
    assert set(ensemble["members"]) == set(ensemble["stacker"]["members"])
    final = load_final_model(tmp_path / "models")
    assert final.stacker is not None and set(final.weights) == set(final.stacker.members)

    layout = Layout(tmp_path)
    test = load_feature_set(layout, "binary").of_split("test")
    served = final.predict(test, rows_of(pd.read_parquet(layout.aligned), test))
    written = pd.read_parquet(tmp_path / "reports" / "test_predictions.parquet").set_index("row_id")
    assert np.allclose(written.loc[test.ids, "prob_yes"].to_numpy(), served, atol=1e-6)
    assert report["test"]["auc"] == pytest.approx(score("binary", "auc", test.target, served))
    written_report = (tmp_path / "reports" / "report.md").read_text()
    assert "the ensemble of them, stacked: a log-linear pool" in written_report
    assert "Combined by stacking (train.combine)" in written_report
