from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from modelzoo.registry import names
from tasks.config import FusionConfig, TrainConfig
from tasks.errors import DataError
from tasks.scores.metrics import score
from tasks.train.best_epoch import EpochChoice
from tasks.train.dataset import FeatureSet
from tasks.train.training import ModalityDropout, TrainResult, build_head, head_features, predict, train_model
from tests.threads import torch_threads

N_CLASSES = 3
HEADS = names("head")
FUSION = FusionConfig.model_validate({"head": "concat", "hidden": 32, "dropout": 0.0})
FAST = TrainConfig(epochs=15, lr=3e-3, batch_size=64, patience=15, seed=0, device="cpu")
TINY = TrainConfig(epochs=6, lr=3e-3, batch_size=64, patience=6, seed=0, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def head_config(head: str) -> FusionConfig:
    """Small versions of every head, so that the all-heads tests stay fast."""
    return FusionConfig.model_validate({"head": head, "hidden": 16, "dropout": 0.0, "token_dim": 8})


def synthetic(task: str, n_rows: int = 600, noise: float = 0.0, seed: int = 0) -> FeatureSet:
    """A learnable problem: the target is a fixed function of the tabular and text blocks.

    multilabel: label c is on where signal c > 0, so rows carry 0..3 labels at once.
    """
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
    elif task == "multilabel":
        target = (signal > 0).astype(np.float32)  # (N, C)
    else:
        target = (10.0 * signal[:, 0] + 50.0).astype(np.float32)
    split = np.array(["train", "val", "test"])[rng.choice(3, size=n_rows, p=[0.6, 0.2, 0.2])]
    return FeatureSet(
        ids=np.array([f"r{i}" for i in range(n_rows)]),
        split=split,
        target=target,
        inputs={"tabular": tabular, "text.a": text},
        present={"tabular": np.ones(n_rows, dtype=bool), "text.a": text_present},
        classes=tuple(f"c{i}" for i in range(N_CLASSES)) if task in ("multiclass", "multilabel") else (),
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


# --- every head, every task ---------------------------------------------------------------


def with_wide_block(features: FeatureSet) -> FeatureSet:
    """Add a hashed-id block as tasks/features/wide.py writes it: ids 1..8 from the sign of two columns."""
    tabular = features.inputs["tabular"]
    ids = np.stack([1 + (tabular[:, 0] > 0), 3 + (tabular[:, 1] > 0) * 2], axis=1).astype(np.float32)
    n_rows = len(features.ids)
    return FeatureSet(
        features.ids,
        features.split,
        features.target,
        {**features.inputs, "tabular.__wide__": ids},
        {**features.present, "tabular.__wide__": np.ones(n_rows, dtype=bool)},
        features.classes,
    )


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "regression"])
@pytest.mark.parametrize("head", HEADS)
def test_every_head_learns_every_task(head: str, task: str) -> None:
    features = with_wide_block(synthetic(task, n_rows=400))
    result = train_model(features, task, head_config(head), TINY, progress=False)
    history = result.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert min(h["val_loss"] for h in history) < history[0]["val_loss"]


ALL_OPTIONS = TINY.model_copy(
    update={
        "class_weight": "balanced",
        "schedule": "cosine",
        "warmup": 0.2,
        "grad_clip": 1.0,
        "modality_dropout": 0.3,
    }
)


@pytest.mark.parametrize("head", HEADS)
def test_same_params_and_data_give_identical_predictions_for_every_head(head: str) -> None:
    features = with_wide_block(synthetic("binary", n_rows=300))
    runs = [train_model(features, "binary", head_config(head), ALL_OPTIONS, progress=False) for _ in range(2)]
    assert runs[0].history == runs[1].history
    rows = head_features(features, head)
    np.testing.assert_array_equal(
        predict(runs[0].model, rows, "binary", None), predict(runs[1].model, rows, "binary", None)
    )


@pytest.mark.parametrize("head", HEADS)
def test_rows_without_a_modality_still_get_predictions(head: str) -> None:
    features = synthetic("binary", n_rows=300)
    result = train_model(features, "binary", head_config(head), TINY, progress=False)
    test = features.of_split("test")
    no_text = FeatureSet(
        test.ids, test.split, test.target, test.inputs,
        {**test.present, "text.a": np.zeros(len(test.ids), dtype=bool)},
    )  # fmt: skip
    with_text = predict(result.model, test, "binary", None)
    without_text = predict(result.model, no_text, "binary", None)
    assert without_text.shape == with_text.shape
    assert np.isfinite(without_text).all() and ((without_text >= 0) & (without_text <= 1)).all()
    assert not np.allclose(with_text, without_text)


def test_wide_blocks_reach_only_heads_that_consume_them() -> None:
    features = with_wide_block(synthetic("binary", n_rows=200))
    one_epoch = TINY.model_copy(update={"epochs": 1})
    concat = train_model(features, "binary", head_config("concat"), one_epoch, progress=False)
    wide = train_model(features, "binary", head_config("wide_deep"), one_epoch, progress=False)
    assert "tabular.__wide__" not in concat.in_dims
    assert wide.in_dims["tabular.__wide__"] == 2


# --- options ------------------------------------------------------------------------------


def imbalanced(n_rows: int = 800) -> FeatureSet:
    """Binary with 10% positives and a noisy signal, so a model is unsure about many rows."""
    features = synthetic("regression", n_rows=n_rows, noise=2.0)
    target = (features.target > np.quantile(features.target, 0.9)).astype(np.float32)
    return FeatureSet(features.ids, features.split, target, features.inputs, features.present)


def test_balanced_class_weight_raises_the_minority_class_probability() -> None:
    features = imbalanced()
    test = features.of_split("test")
    plain = fit("binary", features)
    balanced = fit("binary", features, FAST.model_copy(update={"class_weight": "balanced"}))
    p_plain = predict(plain.model, test, "binary", None)
    p_balanced = predict(balanced.model, test, "binary", None)
    positives = test.target == 1
    assert p_balanced[positives].mean() > p_plain[positives].mean() + 0.1
    assert (p_balanced >= 0.5).sum() > (p_plain >= 0.5).sum()


def test_grad_clip_is_applied_to_every_step() -> None:
    # Clipped to a norm of 1e-12, gradients sink far below Adam's epsilon (1e-8), so a step
    # moves a weight by at most about lr * 1e-4; unclipped, the first steps move by about lr.
    features = synthetic("binary", n_rows=200)
    clipped = FAST.model_copy(update={"epochs": 1, "patience": 1, "grad_clip": 1e-12, "weight_decay": 0.0})
    result = fit("binary", features, clipped)
    torch.manual_seed(clipped.seed)
    initial = build_head(FUSION, result.in_dims, 1)
    moved = max(
        float((p - q).abs().max())
        for p, q in zip(result.model.state_dict().values(), initial.state_dict().values(), strict=True)
    )
    assert moved < 0.01 * clipped.lr


def test_modality_dropout_hides_all_blocks_of_a_modality_together() -> None:
    present = {k: torch.ones(5000, dtype=torch.bool) for k in ("tabular", "text.a", "text.b")}
    masks = ModalityDropout(present, p=0.5, seed=0).epoch_masks()
    assert torch.equal(masks["text.a"], masks["text.b"])
    assert not masks["text.a"].all() and not masks["tabular"].all()


def test_modality_dropout_never_hides_every_modality_of_a_row() -> None:
    present = {k: torch.ones(5000, dtype=torch.bool) for k in ("tabular", "text.a", "image.p")}
    masks = ModalityDropout(present, p=0.9, seed=0).epoch_masks()
    assert torch.stack(list(masks.values())).any(dim=0).all()


def test_modality_dropout_never_hides_the_only_modalities_a_row_has() -> None:
    """Rows without text or image keep their tabular block: the check looks at presence."""
    present = {
        "tabular": torch.ones(4000, dtype=torch.bool),
        "text.a": torch.arange(4000) % 2 == 0,  # odd rows have no text ...
        "image.p": torch.arange(4000) % 4 == 0,  # ... and no image
    }
    dropout = ModalityDropout(present, p=0.9, seed=0)
    for _ in range(3):
        masks = dropout.epoch_masks()
        assert torch.stack(list(masks.values())).any(dim=0).all()


def test_modality_dropout_hides_a_modality_at_the_configured_rate() -> None:
    # Two modalities at p = 0.3: hidden alone with p (1 - p) = 0.21; both-hidden draws hide none.
    present = {k: torch.ones(20000, dtype=torch.bool) for k in ("tabular", "text.a")}
    masks = ModalityDropout(present, p=0.3, seed=0).epoch_masks()
    assert (~masks["tabular"]).float().mean().item() == pytest.approx(0.21, abs=0.015)


def test_modality_dropout_keeps_rows_that_were_already_absent_absent() -> None:
    present = {"tabular": torch.ones(100, dtype=torch.bool), "text.a": torch.arange(100) % 2 == 0}
    masks = ModalityDropout(present, p=0.5, seed=0).epoch_masks()
    assert not masks["text.a"][1::2].any()


def test_multilabel_predictions_are_independent_label_probabilities() -> None:
    features = synthetic("multilabel")
    prob = predict(fit("multilabel", features).model, features, "multilabel", None)
    assert prob.shape == (600, N_CLASSES)
    assert ((prob >= 0) & (prob <= 1)).all()
    assert not np.allclose(prob.sum(axis=1), 1.0)
    accuracy = ((prob >= 0.5) == (features.target == 1)).mean()
    assert accuracy > 0.85


# --- evaluate.metric picks the epoch ------------------------------------------------------

EPOCHS = [  # (val loss, P(positive) of the four val rows [neg, neg, pos, pos])
    (0.40, [0.6, 0.4, 0.6, 0.7]),  # accuracy 0.75
    (0.30, [0.6, 0.4, 0.6, 0.7]),  # accuracy 0.75 again, lower loss: the tie goes to it
    (0.45, [0.1, 0.2, 0.8, 0.9]),  # accuracy 1.0, higher loss
    (0.20, [0.6, 0.6, 0.8, 0.9]),  # accuracy 0.5, the lowest loss
]


def _choose(metric: str | None, truth: np.ndarray, patience: int = 9) -> EpochChoice:
    choice = EpochChoice("binary", metric, truth, patience)
    for epoch, (loss, prob) in enumerate(EPOCHS, start=1):
        choice.observe(epoch, loss, np.array(prob))
    return choice


def test_a_chosen_metric_keeps_the_epoch_it_scores_best_not_the_lowest_loss() -> None:
    truth = np.array([0, 0, 1, 1], dtype=np.float32)
    assert _choose("accuracy", truth).best_epoch == 3
    assert _choose(None, truth).best_epoch == 4  # auto: val loss, as before


def test_a_tie_in_the_metric_that_lowers_the_loss_is_progress_for_patience() -> None:
    truth = np.array([0, 0, 1, 1], dtype=np.float32)
    choice = EpochChoice("binary", "accuracy", truth, patience=1)
    choice.observe(1, *EPOCHS[0])
    choice.observe(2, EPOCHS[1][0], np.array(EPOCHS[1][1]))
    assert choice.improved and not choice.exhausted and choice.best_epoch == 2


def test_a_metric_undefined_on_val_leaves_the_epoch_to_the_loss() -> None:
    """One class in the val rows: AUC has no value, so every epoch ties on it and loss decides."""
    choice = _choose("auc", np.zeros(4, dtype=np.float32))
    assert choice.best_epoch == 4


def test_train_model_keeps_the_epoch_of_the_best_val_metric() -> None:
    features = synthetic("multiclass", n_rows=300, noise=2.0)
    result = train_model(features, "multiclass", FUSION, TINY, progress=False, metric="f1_macro")
    by_metric = max(result.history, key=lambda h: (h["val_f1_macro"], -h["val_loss"]))
    assert result.best_epoch == by_metric["epoch"]
    val = features.of_split("val")
    restored = score("multiclass", "f1_macro", val.target, predict(result.model, val, "multiclass", None))
    assert restored == pytest.approx(by_metric["val_f1_macro"])


def test_a_regression_metric_is_measured_on_the_target_scale() -> None:
    features = synthetic("regression", n_rows=300, noise=1.0)
    result = train_model(features, "regression", FUSION, TINY, progress=False, metric="mae")
    val = features.of_split("val")
    prediction = predict(result.model, val, "regression", result.target_scaling)
    best = result.history[result.best_epoch - 1]
    assert best["val_mae"] == pytest.approx(score("regression", "mae", val.target, prediction), rel=1e-4)
