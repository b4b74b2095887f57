from __future__ import annotations

import numpy as np
import pytest

from tasks.config import FusionConfig, TrainConfig
from tasks.dataset import FeatureSet
from tasks.errors import DataError
from tasks.training import TrainResult, predict, train_model

N_CLASSES = 3
FUSION = FusionConfig.model_validate({"head": "concat", "hidden": 32, "dropout": 0.0})
FAST = TrainConfig(epochs=15, lr=3e-3, batch_size=64, patience=15, seed=0, device="cpu")


def synthetic(task: str, n_rows: int = 600, noise: float = 0.0, seed: int = 0) -> FeatureSet:
    """A learnable problem: the target is a fixed function of the tabular and text blocks."""
    rng = np.random.default_rng(seed)
    tabular = rng.normal(size=(n_rows, 6)).astype(np.float32)
    text = rng.normal(size=(n_rows, 8)).astype(np.float32)
    text_present = rng.random(n_rows) > 0.2
    text[~text_present] = 0.0
    signal = tabular @ rng.normal(size=(6, N_CLASSES)) + text @ rng.normal(size=(8, N_CLASSES))
    signal += noise * rng.normal(size=signal.shape)
    if task == "binary":
        target = (signal[:, 0] > 0).astype(np.float32)
    elif task == "multiclass":
        target = signal.argmax(axis=1).astype(np.int64)
    else:
        target = (10.0 * signal[:, 0] + 50.0).astype(np.float32)
    split = np.array(["train", "val", "test"])[rng.choice(3, size=n_rows, p=[0.6, 0.2, 0.2])]
    return FeatureSet(
        ids=np.array([f"r{i}" for i in range(n_rows)]),
        split=split,
        target=target,
        inputs={"tabular": tabular, "text.a": text},
        present={"tabular": np.ones(n_rows, dtype=bool), "text.a": text_present},
        classes=tuple(f"c{i}" for i in range(N_CLASSES)) if task == "multiclass" else (),
    )


def fit(task: str, features: FeatureSet | None = None, train: TrainConfig = FAST) -> TrainResult:
    return train_model(features or synthetic(task), task, FUSION, train, progress=False)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_loss_falls_on_a_learnable_problem(task: str) -> None:
    history = fit(task).history
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert min(h["val_loss"] for h in history) < 0.5 * history[0]["val_loss"]


def test_early_stopping_restores_the_best_epoch() -> None:
    # Few noisy rows and a high learning rate: validation loss bottoms out early, then rises.
    features = synthetic("regression", n_rows=150, noise=3.0)
    overfit = TrainConfig(epochs=200, lr=1e-2, batch_size=16, patience=3, seed=0, device="cpu")
    result = fit("regression", features, overfit)

    assert len(result.history) == result.best_epoch + overfit.patience < overfit.epochs
    best = min(h["val_loss"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_loss"] == best

    val = features.of_split("val")
    scaling = result.target_scaling
    assert scaling is not None
    residual = (predict(result.model, val, "regression", scaling) - val.target) / scaling.std
    assert float(np.mean(residual**2)) == pytest.approx(best, rel=1e-5)


def test_same_inputs_give_identical_predictions() -> None:
    features = synthetic("binary")
    first, second = fit("binary", features), fit("binary", features)
    assert first.history == second.history
    np.testing.assert_array_equal(
        predict(first.model, features, "binary", None),
        predict(second.model, features, "binary", None),
    )


@pytest.mark.parametrize(
    ("task", "shape"),
    [("binary", (600,)), ("multiclass", (600, N_CLASSES)), ("regression", (600,))],
)
def test_predict_shapes(task: str, shape: tuple[int, ...]) -> None:
    features = synthetic(task)
    result = fit(task, features, FAST.model_copy(update={"epochs": 1}))
    assert predict(result.model, features, task, result.target_scaling).shape == shape


def test_binary_predictions_are_probabilities() -> None:
    features = synthetic("binary")
    prob = predict(fit("binary", features).model, features, "binary", None)
    assert ((prob >= 0) & (prob <= 1)).all()


def test_multiclass_predictions_sum_to_one() -> None:
    features = synthetic("multiclass")
    prob = predict(fit("multiclass", features).model, features, "multiclass", None)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)


def test_regression_predictions_are_on_the_target_scale() -> None:
    features = synthetic("regression")
    result = fit("regression", features)
    test = features.of_split("test")
    prediction = predict(result.model, test, "regression", result.target_scaling)
    rmse = float(np.sqrt(np.mean((prediction - test.target) ** 2)))
    assert rmse < 0.5 * float(np.std(test.target))


def test_result_model_is_on_cpu_in_eval_mode() -> None:
    result = fit("binary", train=FAST.model_copy(update={"epochs": 1}))
    assert not result.model.training
    assert all(p.device.type == "cpu" for p in result.model.parameters())
    assert result.in_dims == {"tabular": 6, "text.a": 8}
    assert result.out_dim == 1


def test_missing_validation_split_is_a_data_error() -> None:
    features = synthetic("binary")
    no_val = features.rows(features.split != "val")
    with pytest.raises(DataError, match="val"):
        fit("binary", no_val)


def test_binary_target_outside_zero_one_is_a_data_error() -> None:
    features = synthetic("binary")
    relabelled = FeatureSet(
        features.ids, features.split, features.target * 2, features.inputs, features.present
    )
    with pytest.raises(DataError, match="outside"):
        fit("binary", relabelled)


def test_regression_predict_without_scaling_is_refused() -> None:
    features = synthetic("regression")
    result = fit("regression", features, FAST.model_copy(update={"epochs": 1}))
    with pytest.raises(ValueError, match="target_scaling"):
        predict(result.model, features, "regression", None)


def test_predict_accepts_the_plain_scaling_pair_a_bundle_stores() -> None:
    features = synthetic("regression")
    result = fit("regression", features, FAST.model_copy(update={"epochs": 1}))
    assert result.target_scaling is not None
    plain = (float(result.target_scaling.mean), float(result.target_scaling.std))
    np.testing.assert_array_equal(
        predict(result.model, features, "regression", plain),
        predict(result.model, features, "regression", result.target_scaling),
    )
