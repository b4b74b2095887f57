"""Warnings every run used to print, each from a real code path, with warnings as errors.

- scikit-learn's "y_prob values do not sum to one": float32 probabilities checked at
  float64's tolerance (tasks/scores/metrics.py renormalises them in float64).
- torch's "The given NumPy array is not writable": fine-tuning put pandas 3's read-only
  target into a tensor that shares its memory (tasks/train/finetune_loop.py).

torch says the second once per process; `set_warn_always` makes it say it every time, so
these tests see it whatever ran before them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from tasks.config import FusionConfig, TrainConfig
from tasks.scores.metrics import compute_metrics
from tasks.train.assemble import encode_target
from tasks.train.dataset import FeatureSet
from tasks.train.finetune_loop import Part, fit_with_top, lower_rows, predict_with_top
from tasks.train.objectives import to_prediction

ROWS = 60
CLASSES = ("cat", "dog", "fish")


@pytest.fixture()
def warnings_are_errors() -> Iterator[None]:
    was = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield
    finally:
        torch.set_warn_always(was)


def test_multiclass_metrics_of_float32_probabilities_in_float64_do_not_warn(
    warnings_are_errors: None,
) -> None:
    logits = torch.randn(500, 5, generator=torch.Generator().manual_seed(0)) * 3
    probabilities = to_prediction("multiclass", logits).numpy().astype(np.float64)  # (500, 5)
    labels = np.arange(500) % 5
    metrics = compute_metrics("multiclass", labels, probabilities)
    assert np.isfinite(metrics["log_loss"])


@dataclass(frozen=True)
class _Schedule:
    """What the loop reads of `encoders.<modality>.finetune`."""

    lr: float = 1e-3
    warmup: float = 0.0
    epochs: int = 2
    batch_size: int = 16


def _features(rng: np.random.Generator) -> FeatureSet:
    """Classes encoded as the train stage encodes them: pandas 3 hands out a read-only array."""
    target, classes = encode_target(pd.Series(rng.choice(CLASSES, ROWS)), "multiclass")
    assert not target.flags.writeable  # what made torch warn: the test needs it so
    tabular = rng.normal(size=(ROWS, 3)).astype(np.float32)
    tabular.setflags(write=False)  # as an Arrow block is
    return FeatureSet(
        ids=np.array([f"r{i}" for i in range(ROWS)]),
        split=np.array(["train"] * 40 + ["val"] * 10 + ["test"] * 10),
        target=target,
        inputs={"tabular": tabular, "text.review": np.zeros((ROWS, 8), dtype=np.float32)},
        present={"tabular": np.ones(ROWS, dtype=bool), "text.review": np.ones(ROWS, dtype=bool)},
        classes=classes,
    )


def test_fine_tuning_on_read_only_arrays_does_not_warn(warnings_are_errors: None) -> None:
    rng = np.random.default_rng(0)
    features = _features(rng)
    digests = [f"text-{row % 7}" for row in range(ROWS)]  # 7 distinct texts
    outputs = {digest: torch.randn(4, dtype=torch.float16) for digest in set(digests)}  # cached lower outputs
    lower = lower_rows({"review": digests}, outputs, lambda state: 0)
    part = Part(
        modality="text",
        top=nn.Linear(4, 8),
        dim=8,
        collate=lambda states, device: (torch.stack(states).float().to(device),),  # (b, 4)
        setting="encoders.text.finetune",
    )
    train = TrainConfig(epochs=2, patience=2, seed=0, device="cpu")
    fusion = FusionConfig(head="concat", hidden=8, dropout=0.0)
    fitted = fit_with_top(features, lower, part, "multiclass", fusion, train, _Schedule(), 32, progress=False)
    prediction = predict_with_top(fitted.head, part, features, lower, "multiclass", None, 32)
    assert prediction.shape == (ROWS, len(CLASSES))
