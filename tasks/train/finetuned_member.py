"""The fine-tuned text model as an ensemble member, and the loaders of every fine-tuned kind.

Its directory is a head bundle plus text_top.safetensors (the fine-tuned top transformer
layers) and finetune.json (layers, text columns, the text encoder settings, the SHA-256 of
the weights); tasks.train.finetuned_files writes and checks them, as it does for the
fine-tuned image model (tasks.train.finetuned_image_member). Loading refuses top weights
whose digest differs and rebuilds the top from the base encoder named in finetune.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from modelzoo.encoders.huggingface import HuggingFaceTextEncoder
from modelzoo.encoders.text_finetune import TextTop
from tasks.config import Params
from tasks.errors import BundleError
from tasks.modalities.text import TextEncoderConfig
from tasks.train.bundle import BundleMeta, load_bundle
from tasks.train.dataset import FeatureSet, with_blocks
from tasks.train.finetune import (
    TEXT,
    load_finetuned_top,
    load_hf_text_encoder,
    predict_finetuned,
    train_finetuned,
)
from tasks.train.finetuned_files import (
    FINETUNE_META,
    FinetunedResult,
    read_top_files,
    top_weights_name,
    write_top_files,
)
from tasks.train.finetuned_image_member import fit_finetuned_image_member, load_finetuned_image_member
from tasks.train.plan import FINETUNED_IMAGE, FINETUNED_TEXT, Budget, MemberSpec

__all__ = [
    "FINETUNE_META",
    "TOP_WEIGHTS",
    "FinetunedMember",
    "FinetunedTextResult",
    "fit_finetuned",
    "load_finetuned_member",
    "member_loaders",
    "texts_of",
]

TOP_WEIGHTS = top_weights_name(TEXT)
Texts = dict[str, list[str | None]]


@dataclass
class FinetunedTextResult(FinetunedResult):
    """FinetunedResult whose top is the text encoder's top layers."""

    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)

    def member(self, meta: BundleMeta) -> FinetunedMember:
        assert isinstance(self.top, TextTop)
        return FinetunedMember(self.model, meta, self.top, self.columns, self.text, self.cache_dir)

    def write_extras(self, directory: Path) -> None:
        assert self.top is not None
        info = {
            "kind": FINETUNED_TEXT,
            "layers": self.text.finetune.layers,
            "columns": list(self.columns),
            TEXT: self.text.model_dump(mode="json"),
        }
        write_top_files(directory, TEXT, self.top, info)


def finetune_settings(params: Params, layers: int) -> TextEncoderConfig:
    """params' text encoder settings with `finetune.layers` set to what this member trains."""
    text = params.encoders.text
    return text.model_copy(update={"finetune": text.finetune.model_copy(update={"layers": layers})})


def texts_of(rows: pd.DataFrame, columns: list[str]) -> Texts:
    """Raw text per column, in row order; a missing cell is None (the row has no such text)."""
    return {c: [None if pd.isna(v) else str(v) for v in rows[c]] for c in columns if c in rows}


def fit_finetuned_member(
    features: FeatureSet, params: Params, spec: MemberSpec, budget: Budget, rows: pd.DataFrame
) -> FinetunedTextResult:
    """The fine-tuned text member on `features` (the aligned `rows`, in the same order)."""
    text = finetune_settings(params, spec.finetune_layers)
    texts = texts_of(rows, params.data.columns.text)
    fitted = train_finetuned(
        features,
        {c: t for c, t in texts.items() if f"text.{c}" in features.inputs},
        params.data.task,
        spec.fusion,
        spec.train,
        text,
        Path(params.cache.dir),
        deadline=budget.deadline,
        metric=params.evaluate.epoch_metric(params.data.task),
    )
    return FinetunedTextResult.from_fitted(fitted, params.cache.dir, text=text)


_FITTERS: dict[str, Callable[..., FinetunedResult]] = {
    FINETUNED_TEXT: fit_finetuned_member,
    FINETUNED_IMAGE: fit_finetuned_image_member,
}


def fit_finetuned(
    features: FeatureSet, params: Params, spec: MemberSpec, budget: Budget, rows: pd.DataFrame
) -> FinetunedResult:
    """The member `spec` names, for a fine-tuned kind; `rows` are the aligned rows of `features`."""
    return _FITTERS[spec.kind](features, params, spec, budget, rows)


def is_finetuned(kind: str) -> bool:
    return kind in _FITTERS


@dataclass
class FinetunedMember:
    """Predicts with the fine-tuned top on the rows' raw text and the head on every other block."""

    head: nn.Module
    meta: BundleMeta
    top: TextTop
    columns: tuple[str, ...]
    text: TextEncoderConfig
    cache_dir: str
    base_encoder: HuggingFaceTextEncoder | None = None

    def predict(self, features: FeatureSet, rows: pd.DataFrame) -> np.ndarray:
        if self.base_encoder is None:  # loaded once per member, not per call
            self.base_encoder = load_hf_text_encoder(self.text.model)
        return predict_finetuned(
            self.head,
            self.top,
            with_blocks(features, self.meta.in_dims),
            texts_of(rows, list(self.columns)),
            self.meta.task,
            self.meta.target_scaling,
            self.text,
            Path(self.cache_dir),
            base_encoder=self.base_encoder,
        )


def load_finetuned_member(directory: Path, cache_dir: str | Path) -> FinetunedMember:
    """The member written by FinetunedTextResult.write_extras; refuses top weights that do not match."""
    head, meta = load_bundle(directory)
    info, state = read_top_files(directory, TEXT)
    try:
        text = TextEncoderConfig.model_validate(info[TEXT])
        encoder = load_hf_text_encoder(text.model)
        top = load_finetuned_top(text, int(info["layers"]), state, encoder)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise BundleError(f"{directory}: fine-tuned text weights do not fit their encoder ({err})") from None
    return FinetunedMember(head, meta, top, tuple(info["columns"]), text, str(cache_dir), encoder)


def member_loaders(cache_dir: str | Path) -> dict[str, Callable[[Path], Any]]:
    """Member kind -> loader(directory), for kinds that need more than a head bundle."""
    return {
        FINETUNED_TEXT: lambda directory: load_finetuned_member(directory, cache_dir),
        FINETUNED_IMAGE: lambda directory: load_finetuned_image_member(directory, cache_dir),
    }
