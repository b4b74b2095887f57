"""The final model: the ensemble of trained members that evaluate scores and prediction serves.

models/ holds every member the train stage produced, each in its own pickle-free form:

    models/                      the fused head (bundle.json + model.safetensors)
    models/baselines/<modality>/ the same head on one modality
    models/members/<name>/       further heads and seeds (`train.preset: best`), fine-tuned text,
                                 the gradient-boosted member (members/boosted/: LightGBM's text model)
    models/sklearn/              the scikit-learn linear baseline as arrays (portable_linear)
    models/ensemble.json         members with their weights, chosen on val, and what was tried

ensemble.json records the SHA-256 of every file of its members, so a member swapped or edited
after selection is refused instead of silently changing what the weights mean.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from torch import nn

from tasks.errors import BundleError
from tasks.scores.model_names import FUSED
from tasks.train.boosted import read_boosted
from tasks.train.bundle import BASELINES, BundleMeta, load_bundle, predict_with
from tasks.train.dataset import FeatureSet
from tasks.train.ensemble import blend
from tasks.train.plan import BOOSTED
from tasks.train.portable_linear import PortableLinear, read_linear
from tasks.train.sklearn_baseline import predict_linear
from tasks.train.stacking import Stacker

ENSEMBLE = "ensemble.json"
MEMBERS = "members"
SKLEARN_DIR = "sklearn"
SKLEARN_LINEAR = "sklearn_linear"
MEMBER_SECONDS = "member_seconds.json"  # under reports/train/: wall seconds per member (not in models/)
FORMAT_VERSION = 1


class Member(Protocol):
    """Anything that predicts rows: from their encoded features, their raw columns, or both."""

    def predict(self, features: FeatureSet, rows: pd.DataFrame) -> np.ndarray: ...


@dataclass
class HeadMember:
    """A fusion head on the cached embeddings (the fused model, a single modality, another head)."""

    model: nn.Module
    meta: BundleMeta

    def predict(self, features: FeatureSet, rows: pd.DataFrame) -> np.ndarray:
        return predict_with(self.model, self.meta, features)


@dataclass
class LinearMember:
    """The scikit-learn linear baseline, reading the raw text, category and number columns."""

    linear: PortableLinear

    def predict(self, features: FeatureSet, rows: pd.DataFrame) -> np.ndarray:
        return predict_linear(self.linear, rows)


@dataclass
class FinalModel:
    """The weighted members; `weights` sum to 1 and name only members with a positive weight.

    With a `stacker` (`train.combine`), the members are pooled by it rather than averaged, and
    `weights` are its members' shares of its total weight.
    """

    members: dict[str, Member]
    weights: dict[str, float]
    stacker: Stacker | None = None

    def predict(self, features: FeatureSet, rows: pd.DataFrame) -> np.ndarray:
        """The final prediction; `rows` are the raw rows in `features` order."""
        return self.combine(self.predict_each(features, rows))

    def combine(self, each: Mapping[str, np.ndarray]) -> np.ndarray:
        """The members' own predictions (predict_each) made one: pooled, or their weighted average."""
        return self.stacker.predict(each) if self.stacker is not None else blend(each, self.weights)

    def predict_each(self, features: FeatureSet, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        """Each member's own predictions, before blending: evaluate scores them one by one too."""
        return {name: self.members[name].predict(features, rows) for name in self.weights}

    @property
    def is_fused_head(self) -> bool:
        return self.stacker is None and self.weights == {FUSED: 1.0}  # a pool of one still rescales it


def member_dir(models: Path, name: str) -> Path:
    """Where a member of this name lives under models/ (see the module docstring)."""
    if name == FUSED:
        return models
    if name == SKLEARN_LINEAR:
        return models / SKLEARN_DIR
    baseline = models / BASELINES / name
    return baseline if baseline.is_dir() else models / MEMBERS / name


def write_ensemble(models: Path, selection: dict[str, Any], tried: list[dict[str, Any]]) -> None:
    """ensemble.json: the selection (Ensemble.to_json), what was tried, and each member's file digests."""
    files = {}
    for name in selection["members"]:
        directory = member_dir(models, name)
        for path in sorted(p for p in directory.iterdir() if p.is_file()):
            files[str(path.relative_to(models))] = hashlib.sha256(path.read_bytes()).hexdigest()
    body = {"format_version": FORMAT_VERSION, **selection, "tried": tried, "files": files}
    (models / ENSEMBLE).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")


def read_ensemble(models: Path) -> dict[str, Any] | None:
    """ensemble.json, or None for a bundle written without one (the fused head alone)."""
    path = Path(models) / ENSEMBLE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: unreadable ensemble ({err})") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: ensemble format {data.get('format_version')!r} is not supported")
    members = data.get("members")
    if (
        not isinstance(members, dict)
        or not members
        or not all(isinstance(w, (int, float)) and w > 0 for w in members.values())
    ):
        raise BundleError(f"{path}: 'members' must map member names to positive weights")
    for relative, digest in dict(data.get("files", {})).items():
        file = Path(models) / relative
        if not file.is_file() or hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            raise BundleError(
                f"{path}: member file {relative} is missing or changed after the ensemble was chosen; "
                "retrain (dvc repro) or restore it"
            )
    return data


def load_final_model(
    models: Path, fused: tuple[nn.Module, BundleMeta] | None = None, loaders: Mapping[str, Any] | None = None
) -> FinalModel:
    """The ensemble ensemble.json names, or the fused head alone when there is none.

    `fused` passes the already loaded fused bundle; `loaders` maps a member kind that needs
    more than a head (the fine-tuned text model) to a function(directory) -> Member.
    """
    models = Path(models)
    fused_member = HeadMember(*(fused or load_bundle(models)))
    data = read_ensemble(models)
    if data is None:
        return FinalModel({FUSED: fused_member}, {FUSED: 1.0})
    members: dict[str, Member] = {}
    for name in data["members"]:
        if name == FUSED:
            members[name] = fused_member
        else:
            members[name] = load_member(models, name, data.get("kinds", {}).get(name, "head"), loaders)
    total = float(sum(data["members"].values()))
    weights = {name: float(w) / total for name, w in sorted(data["members"].items())}
    return FinalModel(members, weights, _stacker(models, fused_member.meta, data))


def _stacker(models: Path, meta: BundleMeta, ensemble: dict[str, Any]) -> Stacker | None:
    """The stacker ensemble.json names, which must read exactly its members and give the bundle's
    outputs a bias each; None without one."""
    if "stacker" not in ensemble:
        return None
    outputs = len(meta.classes) or 1  # a bias per class; regression (no classes) has one
    try:
        stacker = Stacker.from_json(meta.task, ensemble["stacker"], outputs)
    except ValueError as err:
        raise BundleError(f"{Path(models) / ENSEMBLE}: {err}") from None
    if set(stacker.members) != set(ensemble["members"]):
        raise BundleError(f"{Path(models) / ENSEMBLE}: 'stacker.members' must name exactly its 'members'")
    return stacker


def load_member(models: Path, name: str, kind: str, loaders: Mapping[str, Any] | None = None) -> Member:
    """One member train wrote under models/ (not the fused head), by its name and kind in ensemble.json.

    `loaders` as in load_final_model. Evaluate also loads the members the ensemble left out,
    so the leaderboard scores every model train fitted.
    """
    directory = member_dir(Path(models), name)
    if name == SKLEARN_LINEAR:
        return LinearMember(read_linear(directory))
    if kind == BOOSTED:
        return read_boosted(directory)
    if loaders and kind in loaders:
        return loaders[kind](directory)
    return HeadMember(*load_bundle(directory))
