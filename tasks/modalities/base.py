"""What an embedded modality declares, so that no stage outside this package names one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

if TYPE_CHECKING:
    from tasks.config import DataConfig, EncodersConfig
    from tasks.data.align import AlignReport
    from tasks.features.cache.contents import Contents
    from tasks.features.extract import Extraction


@dataclass(frozen=True)
class EncoderSettings:
    """An encoder as params.yaml names it: the model, its size knob and its batch size."""

    model: str
    size: int  # max_length for text, image_size for images, max_seconds for audio
    batch_size: int


class EmbeddedModality(ABC):
    """A kind of cell that a pretrained encoder turns into one vector per cell.

    `name` is the role key in `data.columns` and `encoders`, and the feature file's name.
    """

    name: ClassVar[str]
    order: ClassVar[int]  # position in feature files, reports and the CLI
    input_version: ClassVar[str]  # how a cell becomes encoder input; part of the cache namespace
    has_files: ClassVar[bool] = False  # cells are paths under data.<name>_root
    verbatim_cells: ClassVar[bool] = False  # cells are content as written (text): never stripped

    def columns(self, data: DataConfig) -> list[str]:
        return list(getattr(data.columns, self.name))

    def encoder_settings(self, encoders: EncodersConfig) -> EncoderSettings:
        config = getattr(encoders, self.name)
        return EncoderSettings(config.model, self.size_of(config), config.batch_size)

    @abstractmethod
    def size_of(self, config: Any) -> int:
        """The encoder config's size knob (max_length, image_size, ...)."""

    @abstractmethod
    def preprocessing(self, size: int) -> dict[str, Any]:
        """The caller-side settings that change the vectors; part of the encoder fingerprint."""

    @abstractmethod
    def load_encoder(self, model: str, size: int) -> nn.Module:
        """The encoder named in params.yaml, in eval mode."""

    def prepare_encoder(self, encoder: nn.Module, device: torch.device) -> nn.Module:
        return encoder.to(device)

    def root(self, data: DataConfig) -> Path | None:
        """Where this modality's files live; None for modalities whose cells are the content."""
        return None

    def inspect_cells(
        self, table: pd.DataFrame, ids: pd.Series, data: DataConfig, root: Path | None, report: AlignReport
    ) -> None:
        """Align's (and prediction's) pass over the cells, in place: nothing for plain values."""
        return None

    @abstractmethod
    def contents(self, table: pd.DataFrame, columns: list[str], root: Path | None, source: str) -> Contents:
        """The distinct contents of these columns, keyed for the row-level cache."""

    def encoding_order(self, contents: Contents, misses: np.ndarray) -> np.ndarray:
        """The order misses are encoded in (text sorts by length so batches pad little)."""
        return misses

    @abstractmethod
    def encode_chunk(self, job: Extraction, index: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(vectors (n, dim), usable (n,), forward seconds) for chunk `index` of the job's misses."""

    def release(self, job: Extraction) -> None:
        """Free what encode_chunk kept between chunks (decode threads, open files)."""
        return None

    def portable_source(self, source: Any) -> Any:
        """A content's source as a worker in another directory can read it."""
        return str(Path(source).resolve()) if self.has_files else source

    def source_from_payload(self, value: Any) -> Any:
        return Path(value) if self.has_files else value
