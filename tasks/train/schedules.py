"""Learning-rate schedules, stepped once per batch.

Per batch rather than per epoch so that warm-up means the same thing for 2 or 200 batches
an epoch. The horizon is `epochs * batches_per_epoch`; early stopping may end training
before the schedule does, which is fine: the best epoch is what is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from tasks.config import TrainConfig

_ONECYCLE_DEFAULT_PCT = 0.3  # torch's own default when `train.warmup` is left at 0


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, batches_per_epoch: int
) -> LRScheduler | None:
    """The scheduler for `train.schedule`; None for a constant learning rate."""
    total = max(1, cfg.epochs * batches_per_epoch)
    if cfg.schedule == "constant":
        return None
    if cfg.schedule == "onecycle":
        return OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=cfg.warmup or _ONECYCLE_DEFAULT_PCT
        )
    return LambdaLR(optimizer, cosine_with_warmup(total, round(cfg.warmup * total)))


def cosine_with_warmup(total: int, warmup: int) -> Callable[[int], float]:
    """Linear rise over `warmup` steps to the full rate, then a cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # never 0: the first batch already learns something
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def warmup_then_linear_decay(total: int, warmup: int) -> Callable[[int], float]:
    """LR factor per step: a linear rise over `warmup` steps, then a linear fall to zero at `total`.

    The usual schedule for fine-tuning a pretrained encoder (tasks.train.finetune_loop): the
    warm-up keeps the first, noisy gradients of a fresh head from wrecking the pretrained layers.
    """

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # never 0: the first batch already learns something
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor
