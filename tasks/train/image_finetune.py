"""Fine-tune the image encoder's last blocks end to end with the fusion head, cheaply.

Only the last N blocks learn, so the feature map entering them is a pure function of the
image file: it is computed once per distinct image (by the file's SHA-256, as align records
it) and kept in the content-addressed lower-output cache (tasks.train.lower_cache), and an
epoch runs only those blocks, the head conv/norm and pooling (forward and backward) and the
fusion head: no decoding, no stem, no early blocks.

The cache holds, per (encoder fingerprint, lower block count, image size, decoder version)
namespace, one float16 (C, h, w) feature map per image:

    <cache_dir>/hidden/<namespace>/<aa>/<sha256>.npy

The loop is the one every fine-tunable modality shares (tasks.train.finetune_loop); here is
what is the images' own: reading, verifying and decoding the files as extraction does, the
feature-map cache, and stacking a batch of maps.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from modelzoo.encoders.base import ImageEncoder
from modelzoo.encoders.image_finetune import ImageTop, LowerImage, lower_image, split_image_encoder
from modelzoo.encoders.loading import encoder_fingerprint, load_image_encoder
from modelzoo.encoders.split import rebuild_top
from tasks.config import FusionConfig, TrainConfig
from tasks.device import pick_device
from tasks.errors import DataError
from tasks.modalities.image import (
    CHANGED,
    DECODED,
    IMAGE_DECODE,
    ImageEncoderConfig,
    ImageModality,
    close_batches,
    decoded_batches,
    normalise_images,
)
from tasks.schema import DIGEST, PRESENT
from tasks.train.dataset import FeatureSet
from tasks.train.finetune_loop import (
    FineTuned,
    LowerRows,
    Part,
    check_columns,
    fit_with_top,
    lower_rows,
    predict_with_top,
    split_indices,
)
from tasks.train.lower_cache import LowerOutputCache

__all__ = [
    "FeatureMapCache",
    "FineTunedImage",
    "ImageCells",
    "image_cells",
    "load_finetuned_image_top",
    "predict_finetuned_image",
    "train_finetuned_image",
]

CACHE_FORMAT = "float16-feature-maps/v1"  # bump when what an entry holds changes
SETTING = "encoders.image.finetune"
IMAGE = ImageModality.name  # the modality whose encoder this fine-tunes


@dataclass
class FineTunedImage(FineTuned):
    """FineTuned with the image top (`top` is an ImageTop) and its depth."""

    blocks: int = 0  # last blocks fine-tuned


@dataclass(frozen=True)
class ImageCells:
    """One image column's rows: the file each row names, and the SHA-256 align read from it."""

    paths: list[Path | None]  # under data.image_root; None where the row has no usable image
    digests: list[str | None]  # hex, None where the row has no usable image


def image_cells(rows: pd.DataFrame, columns: list[str], root: str | Path) -> dict[str, ImageCells]:
    """Each image column of aligned (or batch-prediction) rows as files and their digests.

    A cell counts when align (or prediction's own pass) found it present and recorded a
    digest; its path is taken under `root` (an absolute cell stays as it is).
    """
    cells = {}
    for column in columns:
        if column not in rows:
            continue
        present = rows[PRESENT + column].to_numpy(dtype=bool)
        usable = present & rows[column].notna().to_numpy() & rows[DIGEST + column].notna().to_numpy()
        paths, digests = rows[column].to_numpy(dtype=object), rows[DIGEST + column].to_numpy(dtype=object)
        cells[column] = ImageCells(
            paths=[Path(root) / str(v) if ok else None for ok, v in zip(usable, paths, strict=True)],
            digests=[str(d) if ok else None for ok, d in zip(usable, digests, strict=True)],
        )
    return cells


# --- the feature-map cache ------------------------------------------------------------------------


class FeatureMapCache(LowerOutputCache[Path]):
    """The lower part's feature map by image: one float16 (C, h, w) array per distinct file."""

    noun = IMAGE

    def __init__(
        self,
        cache_dir: Path,
        encoder: ImageEncoder,
        lower: LowerImage,
        batch_size: int,
        device: torch.device | None = None,
        progress: bool = True,
    ) -> None:
        self.encoder = encoder
        self.image_size = encoder.preprocessing.image_size
        self._shape: tuple[int, ...] | None = None
        super().__init__(cache_dir, lower, batch_size, device, progress)

    def describe(self) -> dict[str, Any]:
        """Everything that decides an entry: the encoder (by weights), the split point, the pixels."""
        return {
            "format": CACHE_FORMAT,
            "encoder": encoder_fingerprint(self.encoder),
            "lower_blocks": self.lower.blocks,
            "image_size": self.image_size,
            "decode": IMAGE_DECODE,
        }

    def maps(self, files: dict[str, Path]) -> dict[str, Tensor]:
        """digest -> (C, h, w) float16 CPU feature map; an image that does not decode is left out."""
        return self.outputs(files)

    def plausible(self, array: np.ndarray) -> bool:
        return array.shape == self.entry_shape

    @property
    def entry_shape(self) -> tuple[int, ...]:
        """(C, h, w) of every entry, from a copy of the lower part on the meta device (no arithmetic)."""
        if self._shape is None:
            shadow = copy.deepcopy(self.lower).to("meta")
            size = self.image_size
            self._shape = tuple(shadow(torch.empty(1, 3, size, size, device="meta")).shape[1:])
        return self._shape

    def lower_batches(self, batches: list[list[tuple[str, Path]]]) -> Iterator[list[Tensor | None]]:
        """Files read, verified against their digest and decoded ahead, as extraction decodes them."""
        paths = [path for batch in batches for _, path in batch]
        digests = [bytes.fromhex(digest) for batch in batches for digest, _ in batch]
        decoded = decoded_batches(paths, digests, self.image_size, self.batch_size, self.device)
        try:
            for batch in batches:
                pixels, status = next(decoded)  # (B, S, S, 3) uint8, (B,)
                outcomes = status.tolist()
                changed = [str(path) for (_, path), s in zip(batch, outcomes, strict=True) if s == CHANGED]
                if changed:
                    raise DataError(
                        f"{len(changed)} image files are missing or changed since align; rerun align",
                        file=changed[0],
                    )
                images = normalise_images(pixels, self.encoder.preprocessing, self.device)  # (B, 3, S, S)
                maps = self.lower(images).float().cpu()  # (B, C, h, w), float32 on every device
                yield [maps[i].half().contiguous() if s == DECODED else None for i, s in enumerate(outcomes)]
        finally:
            close_batches(decoded)


# --- images per row -------------------------------------------------------------------------------


def _image_rows(cells: dict[str, ImageCells], cache: FeatureMapCache) -> LowerRows:
    files = {d: p for c in cells.values() for d, p in zip(c.digests, c.paths, strict=True) if d and p}
    maps = cache.maps(dict(sorted(files.items())))
    return lower_rows(_digests(cells), maps, length=lambda _: 0)  # maps all share one shape: no padding


def _stack(maps: list[Tensor], device: torch.device) -> tuple[Tensor]:
    """(b, C, h, w) float32 on the device, channels_last: the layout CNN kernels run fastest in."""
    batch = torch.stack(maps).to(device=device, dtype=torch.float32)  # (b, C, h, w)
    return (batch.contiguous(memory_format=torch.channels_last),)


def _part(top: ImageTop) -> Part:
    return Part(IMAGE, top, top.dim, _stack, SETTING)


def _digests(cells: dict[str, ImageCells]) -> dict[str, list[str | None]]:
    return {column: c.digests for column, c in cells.items()}


# --- training and prediction ----------------------------------------------------------------------


def train_finetuned_image(
    features: FeatureSet,
    cells: dict[str, ImageCells],
    task: str,
    fusion: FusionConfig,
    train: TrainConfig,
    image: ImageEncoderConfig,
    cache_dir: Path,
    progress: bool = True,
    base_encoder: ImageEncoder | None = None,
    deadline: float | None = None,
    metric: str | None = None,
) -> FineTunedImage:
    """Fit `fusion.head` and the image encoder's last `image.finetune.blocks` blocks together.

    `cells[column]` names every row's image file (all splits, aligned with `features.ids`);
    its embedding replaces block `image.<column>`. One top serves every image column, as one
    frozen encoder did. `base_encoder` saves loading `image.model` again. `deadline`
    (time.time()) ends training after the epoch that passes it, keeping the best epoch, which
    `metric` picks as train_model does (None: val loss).
    """
    blocks = image.finetune.blocks
    if blocks < 1:
        raise ValueError(f"{SETTING}.blocks is 0 (a frozen encoder): train with train_model")
    check_columns(features, _digests(cells), IMAGE)
    split_indices(features)  # before the lower pass: a split without train or val rows fails now
    encoder = base_encoder if base_encoder is not None else load_image_encoder(image.model, image.image_size)
    lower, top = split_image_encoder(encoder, blocks)
    device = pick_device(train.device)

    started = time.perf_counter()
    cache = FeatureMapCache(cache_dir, encoder, lower, image.batch_size, device, progress)
    rows = _image_rows(cells, cache)
    lower_seconds = time.perf_counter() - started

    fitted = fit_with_top(features, rows, _part(top), task, fusion, train, image.finetune, image.batch_size,
                          progress, deadline, metric)  # fmt: skip
    return FineTunedImage.of(fitted, lower_seconds, cache, blocks=blocks)


def predict_finetuned_image(
    head: nn.Module,
    top: ImageTop,
    features: FeatureSet,
    cells: dict[str, ImageCells],
    task: str,
    target_scaling: tuple[float, float] | None,
    image: ImageEncoderConfig,
    cache_dir: Path,
    base_encoder: ImageEncoder | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Predictions in tasks.train.training.predict's form, image blocks recomputed by `top`.

    The lower feature maps come through the same cache as in training, so known images cost
    nothing. Runs where `head` lives; `features` holds the blocks the head was trained on.
    """
    check_columns(features, _digests(cells), IMAGE)
    encoder = base_encoder if base_encoder is not None else load_image_encoder(image.model, image.image_size)
    device = next(head.parameters()).device
    cache = FeatureMapCache(cache_dir, encoder, lower_image(encoder, top.lower_blocks), image.batch_size,
                            device, progress)  # fmt: skip
    rows = _image_rows(cells, cache)
    return predict_with_top(head, _part(top), features, rows, task, target_scaling, image.batch_size)


def load_finetuned_image_top(
    image: ImageEncoderConfig,
    blocks: int,
    state: dict[str, Tensor],
    base_encoder: ImageEncoder | None = None,
) -> ImageTop:
    """The fine-tuned top for prediction: built from `image.model` and loaded strictly, in eval mode.

    Raises:
        ValueError: `state` holds another number of blocks or does not fit the encoder.
    """
    encoder = base_encoder if base_encoder is not None else load_image_encoder(image.model, image.image_size)
    return rebuild_top(ImageTop, encoder, state, expected=blocks)
