"""Learning-rate schedules stepped per batch."""

from __future__ import annotations

import pytest
import torch

from tasks.config import TrainConfig
from tasks.train.schedules import make_scheduler

LR = 0.01


def rates(cfg: TrainConfig, batches_per_epoch: int) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg, batches_per_epoch)
    assert scheduler is not None
    seen = []
    for _ in range(cfg.epochs * batches_per_epoch):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_constant_schedule_has_no_scheduler() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    assert make_scheduler(optimizer, TrainConfig(lr=LR), 10) is None


def test_cosine_warms_up_linearly_then_decays_to_zero() -> None:
    seen = rates(TrainConfig(lr=LR, epochs=10, schedule="cosine", warmup=0.1), batches_per_epoch=10)
    assert seen[0] == pytest.approx(LR / 10)  # 10 warm-up steps of 100
    assert seen[9] == pytest.approx(LR)
    assert max(seen) == pytest.approx(LR)
    assert seen[-1] < 0.01 * LR
    assert all(a >= b for a, b in zip(seen[9:], seen[10:], strict=False))


def test_onecycle_peaks_at_lr_after_its_warmup_share() -> None:
    seen = rates(TrainConfig(lr=LR, epochs=10, schedule="onecycle", warmup=0.25), batches_per_epoch=10)
    peak = seen.index(max(seen))
    assert max(seen) == pytest.approx(LR)
    assert 20 <= peak <= 26
    assert seen[0] < 0.1 * LR and seen[-1] < 0.01 * LR
