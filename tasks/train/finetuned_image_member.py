"""The fine-tuned image model as an ensemble member: training it, its extra files, loading it.

Its directory is a head bundle plus image_top.safetensors (the fine-tuned last blocks, head
conv/norm and pooling) and finetune.json (blocks, image columns, the image encoder settings,
the SHA-256 of the weights), written and checked by tasks.train.finetuned_files.

The member reads the rows' image files itself (a cell is a path under the bundle's
`data.image_root`, or an absolute path), verified against the digest align recorded; their
lower feature maps come from the same content-addressed cache training filled, so images the
pipeline has seen cost no decoding and no stem. Loading refuses top weights whose digest
differs, and a base encoder whose weights differ from the ones the bundle was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from modelzoo.encoders.base import ImageEncoder
from modelzoo.encoders.image_finetune import ImageTop
from modelzoo.encoders.loading import encoder_fingerprint, load_image_encoder
from tasks.config import Params
from tasks.errors import BundleError
from tasks.modalities.image import ImageEncoderConfig
from tasks.train.bundle import BundleMeta, load_bundle
from tasks.train.dataset import FeatureSet, with_blocks
from tasks.train.finetuned_files import FinetunedResult, read_top_files, top_weights_name, write_top_files
from tasks.train.image_finetune import (
    IMAGE,
    image_cells,
    load_finetuned_image_top,
    predict_finetuned_image,
    train_finetuned_image,
)
from tasks.train.plan import FINETUNED_IMAGE, Budget, MemberSpec

__all__ = [
    "IMAGE_TOP_WEIGHTS",
    "FinetunedImageMember",
    "FinetunedImageResult",
    "fit_finetuned_image_member",
    "load_finetuned_image_member",
]

IMAGE_TOP_WEIGHTS = top_weights_name(IMAGE)


@dataclass
class FinetunedImageResult(FinetunedResult):
    """FinetunedResult whose top is the image encoder's last blocks."""

    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    image_root: str = "."

    def member(self, meta: BundleMeta) -> FinetunedImageMember:
        assert isinstance(self.top, ImageTop)
        return FinetunedImageMember(
            self.model, meta, self.top, self.columns, self.image, self.cache_dir, self.image_root
        )

    def write_extras(self, directory: Path) -> None:
        assert self.top is not None
        info = {
            "kind": FINETUNED_IMAGE,
            "blocks": self.image.finetune.blocks,
            "columns": list(self.columns),
            IMAGE: self.image.model_dump(mode="json"),
        }
        write_top_files(directory, IMAGE, self.top, info)


def image_settings(params: Params, blocks: int) -> ImageEncoderConfig:
    """params' image encoder settings with `finetune.blocks` set to what this member trains."""
    image = params.encoders.image
    return image.model_copy(update={"finetune": image.finetune.model_copy(update={"blocks": blocks})})


def fit_finetuned_image_member(
    features: FeatureSet, params: Params, spec: MemberSpec, budget: Budget, rows: pd.DataFrame
) -> FinetunedImageResult:
    """The fine-tuned image member on `features` (the aligned `rows`, in the same order)."""
    image = image_settings(params, spec.finetune_blocks)
    columns = [c for c in params.data.columns.image if f"image.{c}" in features.inputs]
    fitted = train_finetuned_image(
        features,
        image_cells(rows, columns, params.data.image_root),
        params.data.task,
        spec.fusion,
        spec.train,
        image,
        Path(params.cache.dir),
        deadline=budget.deadline,
        metric=params.evaluate.epoch_metric(params.data.task),
    )
    return FinetunedImageResult.from_fitted(
        fitted, params.cache.dir, image=image, image_root=params.data.image_root
    )


@dataclass
class FinetunedImageMember:
    """Predicts with the fine-tuned top on the rows' image files and the head on every other block."""

    head: nn.Module
    meta: BundleMeta
    top: ImageTop
    columns: tuple[str, ...]
    image: ImageEncoderConfig
    cache_dir: str
    image_root: str  # where relative image cells are; an absolute cell is read as it is
    base_encoder: ImageEncoder | None = None

    def predict(self, features: FeatureSet, rows: pd.DataFrame) -> np.ndarray:
        if self.base_encoder is None:  # loaded once per member, not per call
            self.base_encoder = load_image_encoder(self.image.model, self.image.image_size)
        return predict_finetuned_image(
            self.head,
            self.top,
            with_blocks(features, self.meta.in_dims),
            image_cells(rows, list(self.columns), self.image_root),
            self.meta.task,
            self.meta.target_scaling,
            self.image,
            Path(self.cache_dir),
            base_encoder=self.base_encoder,
        )


def load_finetuned_image_member(directory: Path, cache_dir: str | Path) -> FinetunedImageMember:
    """The member written by FinetunedImageResult.write_extras.

    Raises:
        BundleError: the top's weights changed after training, the base encoder here has other
            weights than the one it was trained on, or the weights do not fit the encoder.
    """
    head, meta = load_bundle(directory)
    info, state = read_top_files(directory, IMAGE)
    try:
        image = ImageEncoderConfig.model_validate(info[IMAGE])
        encoder = load_image_encoder(image.model, image.image_size)
        _check_base_weights(directory, encoder, meta)
        top = load_finetuned_image_top(image, int(info["blocks"]), state, encoder)
        columns = tuple(str(c) for c in info["columns"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise BundleError(f"{directory}: fine-tuned image weights do not fit their encoder ({err})") from None
    root = str(meta.params.get("data", {}).get("image_root", "."))
    return FinetunedImageMember(head, meta, top, columns, image, str(cache_dir), root, encoder)


def _check_base_weights(directory: Path, encoder: ImageEncoder, meta: BundleMeta) -> None:
    """The lower blocks come from the encoder installed here: they must be the trained-with ones."""
    recorded = (meta.encoders or {}).get(IMAGE, {}).get("weights_digest")
    here = encoder_fingerprint(encoder)["weights_digest"]
    if recorded != here:
        raise BundleError(
            f"{directory}: the image encoder here ({encoder.model_id!r}, weights {here}) is not the one "
            f"the fine-tuned image model was trained on (weights {recorded}); retrain (dvc repro) "
            "or install those weights"
        )
