"""Encoders compute at a recorded precision, not at whatever the device would default to."""

from __future__ import annotations

import pytest
import torch

from tasks.device import BF16_AUTOCAST, FLOAT32, bf16_autocast_on, encoding_precision, precision_problem

CUDA = torch.device("cuda")  # a device object needs no GPU


def test_cuda_defaults_to_bf16_but_a_float32_record_turns_autocast_off() -> None:
    assert bf16_autocast_on(CUDA)
    with encoding_precision(FLOAT32):
        assert not bf16_autocast_on(CUDA)
    assert bf16_autocast_on(CUDA)  # the block's setting ends with it
    assert not bf16_autocast_on(torch.device("cpu"))


@pytest.mark.parametrize(
    "precision,device,problem",
    [
        (FLOAT32, "cpu", None),
        (FLOAT32, "cuda", None),
        (BF16_AUTOCAST, "cuda", None),
        (BF16_AUTOCAST, "cpu", "need a CUDA GPU"),
        ("float16", "cuda", "unknown encoding precision"),
        (None, "cpu", "unknown encoding precision"),
    ],
)
def test_which_precisions_a_device_can_repeat(
    precision: str | None, device: str, problem: str | None
) -> None:
    found = precision_problem(precision, torch.device(device))
    assert (found is None) if problem is None else (problem in found)
