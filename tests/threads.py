"""Run torch single-threaded inside a test module.

The tests train tiny models; on a small machine whose cores are shared (CI runners, several
engineers), torch's default of one intra-op thread per core makes such steps several times
slower (threads wait on each other), and one thread loses nothing at this size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
