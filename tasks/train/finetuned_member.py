"""The fine-tuned text model as an ensemble member: training it, its extra files, loading it.

Its directory is a head bundle (bundle.json + model.safetensors, the fusion head) plus:

    text_top.safetensors   the fine-tuned top transformer layers
    finetune.json          layers, text columns, the text encoder settings, the SHA-256 of
                           text_top.safetensors

Loading refuses top weights whose digest differs, and rebuilds the top from the base encoder
named in finetune.json, whose fingerprint the bundle's own check has already compared with
the encoder installed here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from modelzoo.encoders.huggingface import HuggingFaceTextEncoder
from modelzoo.encoders.text_finetune import TextTop, top_state
from tasks.config import Params, TextEncoderConfig
from tasks.errors import BundleError
from tasks.evaluate.evaluation import with_blocks
from tasks.train.bundle import BundleMeta, load_bundle
from tasks.train.dataset import FeatureSet
from tasks.train.finetune import load_finetuned_top, load_hf_text_encoder, predict_finetuned, train_finetuned
from tasks.train.plan import FINETUNED_TEXT, Budget, MemberSpec
from tasks.train.training import TrainResult

TOP_WEIGHTS = "text_top.safetensors"
FINETUNE_META = "finetune.json"
Texts = dict[str, list[str | None]]


@dataclass
class FinetunedResult(TrainResult):
    """TrainResult (the head as `model`) plus the fine-tuned top and how it was made."""

    top: TextTop | None = None
    columns: tuple[str, ...] = ()
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    cache_dir: str = ""
    lower_seconds: float = 0.0


def finetune_settings(params: Params, layers: int) -> TextEncoderConfig:
    """params' text encoder settings with `finetune.layers` set to what this member trains."""
    text = params.encoders.text
    return text.model_copy(update={"finetune": text.finetune.model_copy(update={"layers": layers})})


def texts_of(rows: pd.DataFrame, columns: list[str]) -> Texts:
    """Raw text per column, in row order; a missing cell is None (the row has no such text)."""
    return {c: [None if pd.isna(v) else str(v) for v in rows[c]] for c in columns if c in rows}


def fit_finetuned_member(
    features: FeatureSet, params: Params, spec: MemberSpec, budget: Budget, texts: Texts
) -> FinetunedResult:
    text = finetune_settings(params, spec.finetune_layers)
    fitted = train_finetuned(
        features,
        {c: t for c, t in texts.items() if f"text.{c}" in features.inputs},
        params.data.task,
        spec.fusion,
        spec.train,
        text,
        Path(params.cache.dir),
        deadline=budget.deadline,
    )
    return FinetunedResult(
        model=fitted.head,
        in_dims=fitted.in_dims,
        out_dim=fitted.out_dim,
        target_scaling=fitted.target_scaling,
        history=fitted.history,
        best_epoch=fitted.best_epoch,
        train_seconds=fitted.train_seconds + fitted.lower_seconds,
        top=fitted.top,
        columns=fitted.columns,
        text=text,
        cache_dir=str(Path(params.cache.dir).resolve()),
        lower_seconds=fitted.lower_seconds,
    )


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


def as_member(result: FinetunedResult, meta: BundleMeta) -> FinetunedMember:
    assert result.top is not None
    return FinetunedMember(result.model, meta, result.top, result.columns, result.text, result.cache_dir)


def write_finetuned_extras(directory: Path, result: FinetunedResult) -> None:
    """text_top.safetensors and finetune.json beside the head bundle."""
    assert result.top is not None
    weights = save_tensors({k: v.detach().cpu().contiguous() for k, v in top_state(result.top).items()})
    (directory / TOP_WEIGHTS).write_bytes(weights)
    meta = {
        "kind": FINETUNED_TEXT,
        "layers": result.text.finetune.layers,
        "columns": list(result.columns),
        "text": result.text.model_dump(mode="json"),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    (directory / FINETUNE_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_finetuned_member(directory: Path, cache_dir: str | Path) -> FinetunedMember:
    """The member written by write_finetuned_extras; refuses top weights that do not match."""
    head, meta = load_bundle(directory)
    meta_path, weights_path = directory / FINETUNE_META, directory / TOP_WEIGHTS
    try:
        info = json.loads(meta_path.read_text(encoding="utf-8"))
        weights = weights_path.read_bytes()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{directory}: unreadable fine-tuned text model ({err})") from None
    if hashlib.sha256(weights).hexdigest() != info.get("weights_sha256"):
        raise BundleError(
            f"{weights_path}: the fine-tuned text weights changed after training (digest mismatch); "
            "retrain or restore them"
        )
    try:
        text = TextEncoderConfig.model_validate(info["text"])
        encoder = load_hf_text_encoder(text.model)
        top = load_finetuned_top(text, int(info["layers"]), load_tensors(weights), encoder)
    except (KeyError, TypeError, ValueError, SafetensorError, RuntimeError) as err:
        raise BundleError(f"{directory}: fine-tuned text weights do not fit their encoder ({err})") from None
    return FinetunedMember(head, meta, top, tuple(info["columns"]), text, str(cache_dir), encoder)


def member_loaders(cache_dir: str | Path) -> dict[str, Callable[[Path], Any]]:
    """Member kind -> loader(directory), for kinds that need more than a head bundle."""
    return {FINETUNED_TEXT: lambda directory: load_finetuned_member(directory, cache_dir)}
