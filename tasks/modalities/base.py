"""What an embedded modality declares, so that no stage outside this package names one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel
from torch import nn

if TYPE_CHECKING:
    # tasks/config.py builds `data` and `encoders` from the plug-ins (it imports this package):
    # a plug-in sees them as the pydantic models they are, not as config's classes.
    from pydantic import BaseModel as DataConfig
    from pydantic import BaseModel as EncodersConfig

    from modelzoo.encoders.split import FrozenLower, SplitTop
    from tasks.align_report import AlignReport
    from tasks.contents import Contents
    from tasks.encode_job import EncodeJob as Extraction  # the job's plug-in-facing protocol


@dataclass(frozen=True)
class EncoderSettings:
    """An encoder as params.yaml names it: the model, its size knob and its batch size."""

    model: str
    size: int  # max_length for text, image_size for images, max_seconds for audio
    batch_size: int


def known_encoder(problem: str | None, name: str) -> str:
    """`name` when it names an encoder (problem is None), else the ValueError pydantic reports
    under the `model` key: a misspelt encoder fails at load, not as an OSError deep in extract."""
    if problem is not None:
        raise ValueError(problem)
    return name


class EmbeddedModality(ABC):
    """A kind of cell that a pretrained encoder turns into one vector per cell.

    `name` is the role key in `data.columns` and `encoders`, and the feature file's name. The
    plug-in declares its own params: `encoder_config` is the `encoders.<name>` section (with
    `model` and `batch_size` keys), `data_keys` what it adds under `data`; tasks/config.py
    builds the config from these, so no code outside the plug-in names a modality.
    """

    name: ClassVar[str]
    order: ClassVar[int]  # position in feature files, reports and the CLI
    input_version: ClassVar[str]  # how a cell becomes encoder input; part of the cache namespace
    encoder_config: ClassVar[type[BaseModel]]  # `encoders.<name>`: its keys, defaults and checks
    has_files: ClassVar[bool] = False  # cells are paths under data.<name>_root
    verbatim_cells: ClassVar[bool] = False  # cells are content as written (text): never stripped
    # Cells are strings that word-level models can read as they are: TF-IDF, wide n-grams and
    # the linear baseline use these columns (`raw_text_columns`), whatever the modality is called.
    raw_text: ClassVar[bool] = False
    fine_tuning: ClassVar[type[FineTuning] | None] = None  # how its encoder splits; None: it cannot
    # The `encoder_config` key that sizes an input (max_length, image_size, max_seconds): what
    # `size_of` reads and `preprocessing` records. A plug-in sets it, or overrides both.
    size_key: ClassVar[str]

    def data_keys(self) -> dict[str, tuple[Any, Any]]:
        """Keys the modality adds under `data` beside `data.columns.<name>`: key -> (type, default)."""
        return {}

    def columns(self, data: DataConfig) -> list[str]:
        return list(getattr(data.columns, self.name))

    def encoder_section(self, encoders: EncodersConfig) -> Any:
        """Its `encoders.<name>` section, an instance of `encoder_config`."""
        return getattr(encoders, self.name)

    def encoder_settings(self, encoders: EncodersConfig) -> EncoderSettings:
        config = self.encoder_section(encoders)
        return EncoderSettings(config.model, self.size_of(config), config.batch_size)

    def fitted(self, model: str) -> bool:
        """Whether `model` is an encoder fitted on the train rows (a `<name>_encoder` marked fitted)."""
        from modelzoo.encoders.loading import fitted_encoder

        return fitted_encoder(self.name, model)

    def fingerprint(self, encoder: nn.Module, preprocessing: dict[str, Any]) -> dict[str, Any]:
        """Everything that decides the encoder's vectors, as the cache key and bundles record it.

        The default knows modelzoo's text, image and audio encoder contracts; a plug-in with an
        encoder of its own builds it with `modelzoo.encoders.loading.module_fingerprint`.
        """
        from modelzoo.encoders.loading import encoder_fingerprint

        return encoder_fingerprint(encoder, **preprocessing)  # type: ignore[arg-type]

    def size_of(self, config: Any) -> int:
        """The encoder config's size knob: its `size_key` (max_length, image_size, ...)."""
        return int(getattr(config, self.size_key))

    def preprocessing(self, size: int) -> dict[str, Any]:
        """The caller-side settings that change the vectors; part of the encoder fingerprint.

        By default the size knob alone, under its own key; a plug-in whose vectors depend on
        more of what it does outside the encoder overrides this.
        """
        return {self.size_key: size}

    @abstractmethod
    def load_encoder(self, model: str, size: int) -> nn.Module:
        """The encoder named in params.yaml, in eval mode."""

    def prepare_encoder(self, encoder: nn.Module, device: torch.device) -> nn.Module:
        return encoder.to(device)

    def root(self, data: DataConfig) -> Path | None:
        """Where this modality's files live; None for modalities whose cells are the content."""
        return None

    def inspect_cells(
        self,
        table: pd.DataFrame,
        ids: pd.Series,
        data: DataConfig,
        root: Path | None,
        report: AlignReport,
        memo_dir: Path | None = None,
    ) -> None:
        """Align's (and prediction's) pass over the cells, in place: nothing for plain values.

        `memo_dir`: a folder where a modality may keep what it learned about cells it reads
        from elsewhere (files), so a rerun skips the unchanged ones; None keeps nothing.
        """
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


class FineTuning(ABC):
    """A modality's encoder cut for fine-tuning: a frozen lower part and a trainable top.

    A plug-in names a subclass in `fine_tuning` and adds `finetune` to its encoder section:
    `<depth_key>` (units that learn, 0: frozen) and the loop's lr, warmup, epochs, batch_size
    (and `patience`; without it fine-tuning stops on `train.patience`).
    The subclass gives only the modality's own part; one member, cache, loop and bundle format
    (tasks/train/finetuned_member.py, finetune_loop.py, lower_cache.py) serve every modality.
    """

    top_class: ClassVar[type[SplitTop]]  # how the encoder splits (modelzoo.encoders.split)
    depth_key: ClassVar[str]  # "layers", "blocks"
    cost: ClassVar[int]  # `train.preset: best` fits the cheaper fine-tuned members first
    cache_format: ClassVar[str]  # part of the cache namespace: bump when what an entry holds changes
    split_options: ClassVar[dict[str, Any]] = {}  # keywords for `top_class`

    def __init__(self, modality: EmbeddedModality, encoder: Any, section: Any) -> None:
        self.modality, self.encoder, self.section = modality, encoder, section
        self.setting = f"encoders.{modality.name}.finetune"

    @classmethod
    def depth_of(cls, section: Any) -> int:
        return int(getattr(section.finetune, cls.depth_key))

    @classmethod
    def with_depth(cls, section: Any, depth: int) -> Any:
        return section.model_copy(
            update={"finetune": section.finetune.model_copy(update={cls.depth_key: depth})}
        )

    @classmethod
    def best_depth(cls, modality: EmbeddedModality, model: str) -> int:
        """What `train.preset: best` fine-tunes of an encoder that params leave frozen (0: nothing)."""
        return 0

    def split(self, depth: int) -> tuple[FrozenLower, SplitTop]:
        return self.top_class.split(self.encoder, depth, **self.split_options)

    def fingerprint(self) -> dict[str, Any]:
        """The base encoder's fingerprint, as extraction records it in feature files and bundles."""
        size = self.modality.size_of(self.section)
        return self.modality.fingerprint(self.encoder, self.modality.preprocessing(size))

    def describe(self, lower: FrozenLower) -> dict[str, Any]:
        """Everything besides the content that decides a cached lower output: its namespace."""
        return {"format": self.cache_format, "encoder": self.fingerprint(),
                "input": self.modality.input_version, "lower_depth": lower.depth}  # fmt: skip

    @abstractmethod
    def plausible(self, array: np.ndarray, lower: FrozenLower) -> bool:
        """Whether a float16 array read from the cache can be a whole lower output (its shape)."""

    def order(self, missing: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """The order (digest, source) misses run through the lower part in (text: by length)."""
        return missing

    @abstractmethod
    def lower_batches(
        self, lower: FrozenLower, batches: list[list[tuple[str, Any]]], device: torch.device
    ) -> Iterator[list[torch.Tensor | None]]:
        """Per batch of (digest, source): the lower outputs, float16 on CPU, in order (None where a
        source cannot be used); one iterator over all batches, so a modality can decode ahead."""

    @abstractmethod
    def collate(self, outputs: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
        """A batch of cached lower outputs as the top's inputs on `device`."""

    def length(self, output: torch.Tensor) -> int:
        """What a batch holding this output pads to (text: its tokens); 0 where nothing pads."""
        return 0
