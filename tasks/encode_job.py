"""What a modality plug-in sees of an extraction job: the part its `encode_chunk` reads.

The job itself is tasks/features/extract.py's `Extraction`, which also holds the cache
store, the slots and the stats that extract manages. The plug-in interface
(tasks/modalities/base.py) names the job by this protocol, declared below both, so that the
plug-ins need not import extract, which imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from tasks.contents import Contents


class EncoderSizing(Protocol):
    """The encoder settings a plug-in batches by."""

    @property
    def size(self) -> int:
        """The modality's size knob: max_length for text, image_size for images, ..."""
        ...

    @property
    def batch_size(self) -> int: ...


class EncodeJob(Protocol):
    """One modality's planned encoding: the contents, the misses in chunks, the loaded encoder."""

    feed: Any  # what the plug-in keeps between chunks (a decode-ahead feed): its own to set

    @property
    def spec(self) -> EncoderSizing: ...

    @property
    def contents(self) -> Contents: ...

    @property
    def misses(self) -> np.ndarray:
        """Content slots to encode, in encoding order."""
        ...

    @property
    def chunk_rows(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def encoder(self) -> nn.Module | None:
        """The loaded encoder; extract loads it before it asks for a chunk."""
        ...

    def chunk(self, index: int) -> np.ndarray:
        """The content slots of chunk `index` of the misses."""
        ...
