"""What "right" means per task: the loss, the class weights, and logits -> predictions.

binary      one logit; BCE (pos_weight when balanced); prediction P(class 1), shape (N,)
multiclass  C logits; cross-entropy (class weights when balanced); softmax, shape (N, C)
multilabel  C logits; independent BCE per label (pos_weight per label); sigmoid, shape (N, C)
regression  one output; MSE on the standardised target; the value, shape (N,)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from tasks.errors import DataError

TASKS = ("binary", "multiclass", "multilabel", "regression")


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


@dataclass(frozen=True)
class Objective:
    """The training loss of one task, with its (optional) class weighting."""

    task: str
    weight: Tensor | None = None  # multiclass: (C,) per class; binary/multilabel: pos_weight (1,)/(C,)

    def to(self, device: torch.device) -> Objective:
        return Objective(self.task, None if self.weight is None else self.weight.to(device))

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean loss of a batch; logits (b, out_dim) float32."""
        if self.task == "multiclass":
            return nn.functional.cross_entropy(logits, target, weight=self.weight)
        if self.task == "binary":
            return nn.functional.binary_cross_entropy_with_logits(
                logits.squeeze(-1), target, pos_weight=self.weight
            )
        if self.task == "multilabel":
            return nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=self.weight)
        return nn.functional.mse_loss(logits.squeeze(-1), target)


def to_prediction(task: str, logits: Tensor) -> Tensor:
    """Logits (b, out_dim) -> the task's prediction (see the module docstring)."""
    if task == "multiclass":
        return torch.softmax(logits, dim=-1)  # (b, C)
    if task == "multilabel":
        return torch.sigmoid(logits)  # (b, C)
    if task == "binary":
        return torch.sigmoid(logits.squeeze(-1))  # (b,)
    return logits.squeeze(-1)  # (b,), still standardised


def balanced_weights(task: str, target: np.ndarray, out_dim: int) -> Tensor:
    """Weights that make every class (or every label's positives) count as much as the rest.

    multiclass: n / (C * n_c), scikit-learn's "balanced"; binary and multilabel: the
    pos_weight n_negative / n_positive per output. A class absent from the train rows
    keeps weight 1: there is nothing to rebalance, and an infinite weight would poison
    the validation loss if it appears there.
    """
    if task == "multiclass":
        counts = np.bincount(target.astype(np.int64), minlength=out_dim).astype(np.float64)
        weights = np.where(counts > 0, len(target) / (out_dim * np.maximum(counts, 1)), 1.0)
    elif task in ("binary", "multilabel"):
        labels = target.reshape(len(target), -1).astype(np.float64)  # (N, 1) or (N, C)
        positives = labels.sum(axis=0)
        negatives = len(labels) - positives
        weights = np.where((positives > 0) & (negatives > 0), negatives / np.maximum(positives, 1), 1.0)
    else:
        raise ValueError(f"class weights apply to classification, not {task}")
    return torch.as_tensor(weights, dtype=torch.float32)


def output_dim(task: str, target: np.ndarray, classes: tuple[str, ...]) -> int:
    """One output for binary/regression, one per class (or label) otherwise."""
    if task in ("binary", "regression"):
        return 1
    if classes:
        return len(classes)
    if task == "multilabel":
        return int(target.shape[1]) if target.ndim == 2 else 1
    return int(target.max()) + 1 if len(target) else 1


def check_target(task: str, target: np.ndarray, out_dim: int) -> None:
    """Catch bad labels here, where the message can say what is wrong, not inside the loss."""
    if task == "regression":
        if not np.isfinite(target).all():
            raise DataError("the regression target has missing or infinite values")
        return
    if task == "multilabel" and (target.ndim != 2 or target.shape[1] != out_dim):
        raise DataError(f"a multilabel target must be (rows, {out_dim}) 0/1 indicators, got {target.shape}")
    allowed = set(range(out_dim)) if task == "multiclass" else {0, 1}
    unexpected = sorted(set(np.unique(target).tolist()) - allowed)
    if unexpected:
        shown = ", ".join(str(v) for v in unexpected[:5])
        raise DataError(f"{task} target has values outside {sorted(allowed)}: {shown}")
