"""Choosing where tensors live: CUDA when present, CPU otherwise."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from threadpoolctl import ThreadpoolController

from tasks.allocator import keep_freed_memory
from tasks.errors import ConfigError


def pick_device(preference: str = "auto") -> torch.device:
    """`auto` takes CUDA when a GPU is visible; asking for CUDA without one is an error.

    Choosing the CPU also keeps its freed memory for the next batch (tasks.allocator): every
    process that runs an encoder or a head picks its device here, workers on a cluster too.
    """
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device: 'cuda' but no CUDA device is visible here; use 'auto' (CUDA when present, "
            "else the CPU) or 'cpu'"
        )
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(preference)
    if device.type == "cpu":
        keep_freed_memory()
    return device


def use_all_cores() -> None:
    """Intra-op threads = usable cores; torch's default can oversubscribe small machines."""
    torch.set_num_threads(max(1, cores()))


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """torch, OpenMP and BLAS on one thread for the duration, then the caller's settings back.

    Two reasons, both about the fusion head's small forward passes. Speed: on a shared 2-core
    machine each pass of evaluate (ablation, 5 permutation repeats per column) waited on
    spinning threads, and one thread was many times faster. Agreement: a float32 GEMM's last
    bits depend on how many threads split it, so evaluate and batch prediction both predict
    single-threaded and give the same probabilities to the bit for the same rows.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with one_library_thread():
            yield
    finally:
        torch.set_num_threads(previous)


def one_library_thread() -> contextlib.AbstractContextManager:
    """OpenMP and BLAS on one thread for the duration (threadpoolctl's limit, on the libraries
    `_threadpools` last found); torch's own thread count is left as it is."""
    return _threadpools().limit(limits=1)


_controller: tuple[int, ThreadpoolController] | None = None


def _threadpools() -> ThreadpoolController:
    """The process's OpenMP/BLAS libraries, found again only after a new import.

    Finding them walks every loaded shared library (3.5 ms, a twentieth of an API request
    that predicts one row); a library is loaded by an import, so the count of imported
    modules says when the walk must be redone.
    """
    global _controller
    modules = len(sys.modules)
    if _controller is None or _controller[0] != modules:
        _controller = (modules, ThreadpoolController())
    return _controller[1]


# A GPU idles below a few hundred rows per batch; a CPU gains nothing from more.
CUDA_MIN_BATCH = 256


def batch_size_on(device: torch.device, requested: int) -> int:
    return max(requested, CUDA_MIN_BATCH) if device.type == "cuda" else requested


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_workers(device: torch.device) -> int:
    """Processes decoding files beside the main one.

    On a CPU decoding costs a few percent of a CNN forward: one worker, and none on 1-2
    cores, where its start-up and IPC cost more than it saves. A GPU consumes inputs far
    faster than one core decodes them, so there most cores decode.
    """
    count = cores()
    if device.type == "cuda":
        return max(1, min(12, count - 2))
    return 1 if count >= 4 else 0


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


# How encoders compute: recorded with every feature file and bundle, because bf16 embeddings
# differ from float32 ones far beyond rounding and a model learns the ones it was given.
BF16_AUTOCAST = "bfloat16-autocast"
FLOAT32 = "float32"
_encoding_precision: ContextVar[str | None] = ContextVar("encoding_precision", default=None)


def default_precision(device: torch.device) -> str:
    """bf16 autocast on CUDA (tensor cores), float32 elsewhere."""
    return BF16_AUTOCAST if device.type == "cuda" else FLOAT32


def precision_problem(precision: str | None, device: torch.device) -> str | None:
    """Why encoding at `precision` on `device` cannot reproduce such vectors, or None."""
    if precision not in (BF16_AUTOCAST, FLOAT32):
        return f"unknown encoding precision {precision!r} (expected {BF16_AUTOCAST!r} or {FLOAT32!r})"
    if precision == BF16_AUTOCAST and device.type != "cuda":
        return f"features at {precision} need a CUDA GPU, and this run encodes on {device.type}"
    return None


@contextlib.contextmanager
def encoding_precision(precision: str) -> Iterator[None]:
    """Encoders called inside compute at `precision`, whatever the device's default."""
    token = _encoding_precision.set(precision)
    try:
        yield
    finally:
        _encoding_precision.reset(token)


def bf16_autocast_on(device: torch.device) -> bool:
    """bf16 autocast on CUDA unless an `encoding_precision` block asks for float32."""
    precision = _encoding_precision.get() or default_precision(device)
    return device.type == "cuda" and precision == BF16_AUTOCAST


def autocast_for(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16_autocast_on(device))
