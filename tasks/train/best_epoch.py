"""Which epoch a training loop keeps and when it stops: shared by the head and fine-tuning loops.

Under `evaluate.metric: auto` the val loss decides, as it always has. A chosen metric decides
instead, and the val loss breaks its ties, which are frequent (accuracy or kappa on a few
hundred val rows move in steps): an epoch that matches the best metric with a lower loss is
kept and counts as progress for `train.patience`, so a plateau of a coarse metric does not
stop training while the model still improves. Where the metric is undefined on val (AUC
with one class present), every epoch ties on it and the loss alone decides, so a tiny val
split never makes selection fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tasks.scores.metrics import higher_is_better, score


@dataclass
class EpochChoice:
    """The best epoch so far by (signed metric, minus val loss), and epochs since it improved."""

    task: str
    metric: str | None  # None: val loss alone
    truth: np.ndarray  # val targets in natural units, in the order the loop predicts the rows
    patience: int
    scaling: tuple[float, float] | None = None  # regression: (mean, std) the loop's outputs are scaled by
    best_epoch: int = 0
    stale: int = 0
    improved: bool = field(default=False, init=False)  # whether the last epoch observed is the best
    _best: tuple[float, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        self._best = (-math.inf,) * (1 if self.metric is None else 2)

    @property
    def wants_predictions(self) -> bool:
        """Whether `observe` needs the epoch's val predictions (the loss alone needs none)."""
        return self.metric is not None

    @property
    def exhausted(self) -> bool:
        """`train.patience` epochs in a row without progress: time to stop."""
        return self.stale >= self.patience

    def observe(self, epoch: int, val_loss: float, predictions: np.ndarray | None = None) -> dict[str, float]:
        """Take in one epoch's val numbers; what to add to its history row (the metric's value).

        `predictions` are the loop's outputs in tasks.train.training.predict's form (regression
        still standardised); needed when a metric decides.
        """
        extra: dict[str, float] = {}
        key: tuple[float, ...] = (-val_loss,)
        if self.metric is not None:
            if predictions is None:
                raise ValueError(f"choosing epochs on val {self.metric} needs the val predictions")
            value = score(self.task, self.metric, self.truth, self._natural(predictions))
            extra[f"val_{self.metric}"] = value
            signed = value if higher_is_better(self.metric) else -value
            key = (signed if math.isfinite(signed) else -math.inf, -val_loss)
        self.improved = key > self._best  # NaN loss never improves, as `<` never held for it
        if self.improved:
            self._best, self.best_epoch, self.stale = key, epoch, 0
        else:
            self.stale += 1
        return extra

    def _natural(self, predictions: np.ndarray) -> np.ndarray:
        if self.scaling is None:
            return predictions
        mean, std = self.scaling
        return predictions.astype(np.float64) * std + mean
