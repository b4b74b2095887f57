"""Model promotion: a scheduled retrain replaces the served model only if it is not worse.

`models/` is rewritten by every run (it is a DVC output); the registry is what a deployment
predicts with, so a bad data day cannot silently replace a good model. Layout:

    <registry>/v0001/          a copy of models/ (fused bundle + baselines) and its evaluation.json
    <registry>/current.json    which version is promoted, with its primary metric
    <registry>/history.json    every decision, promoted or not, newest last
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.atomic import atomic_dir, write_json
from tasks.errors import BundleError
from tasks.pathcheck import check_model_path
from tasks.scores.metrics import higher_is_better

CURRENT = "current.json"
HISTORY = "history.json"
MODEL = "model"
METRICS = "evaluation.json"  # evaluate's detail (reports/evaluation.json), not the headline
_VERSION = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class Decision:
    """Whether a candidate replaces the current model, and the numbers behind it."""

    promote: bool
    metric: str
    candidate: float
    current: float | None
    tolerance: float
    reason: str


def decide(
    metric: str,
    candidate: float,
    current: float | None,
    tolerance: float,
    interval: dict[str, float] | None = None,
) -> Decision:
    """Promote unless the candidate is worse than the current model by more than `tolerance`.

    `interval` is the paired bootstrap interval of candidate minus current on the rows both were
    scored on. With it, the current model is kept only when the candidate is worse by more than
    the tolerance *and* the whole interval is on the worse side of zero: on a few hundred test rows two
    retrains of the same settings differ by 0.01-0.03 AUC by chance, and the same test rows are
    reused at every decision, so a champion that was lucky on them would otherwise beat every
    fresh candidate by noise alone and the served model would stop learning from new data
    (measured in bench/lifecycle.py: 0.009 AUC in the champion's favour on average, none on the
    oracle). A clearly worse candidate (a column dropped by mistake) is significantly worse and
    stays out. A candidate whose metric is undefined (NaN: say AUC on a one-class test split)
    is never promoted; an undefined current metric never blocks a defined candidate.
    """

    def verdict(promote: bool, reason: str) -> Decision:
        return Decision(promote, metric, candidate, current, tolerance, reason)

    if not math.isfinite(candidate):
        return verdict(False, f"candidate {metric} is undefined ({candidate}); keeping the current model")
    if current is None:
        return verdict(True, f"no model promoted yet; promoting the candidate ({metric} {candidate:.4f})")
    if not math.isfinite(current):
        return verdict(True, f"current {metric} is undefined; promoting the candidate ({candidate:.4f})")
    higher = higher_is_better(metric)
    worse_by = current - candidate if higher else candidate - current
    comparison = f"candidate {metric} {candidate:.4f} vs current {current:.4f}"
    if worse_by > tolerance and interval is not None and not _surely_worse(interval, higher):
        return verdict(
            True,
            f"{comparison}: worse by {worse_by:.4f}, but the 95 % paired interval of the difference "
            f"({interval['low']:+.4f} to {interval['high']:+.4f}) includes zero: a gap this size is chance "
            "on these rows, so promoting the model trained on the newer data",
        )
    if worse_by > tolerance:
        return verdict(
            False,
            f"candidate {metric} {candidate:.4f} is worse than current {current:.4f} by {worse_by:.4f} "
            f"(> tolerance {tolerance:g}"
            + (
                ", and the whole 95 % paired interval of the difference is on the worse side of zero"
                if interval
                else ""
            )
            + "); keeping the current model",
        )
    return verdict(True, f"{comparison} is within tolerance {tolerance:g} or better; promoting")


def _surely_worse(interval: dict[str, float], higher_is_better: bool) -> bool:
    """The whole interval of candidate minus current lies on the worse side of zero."""
    return interval["high"] < 0 if higher_is_better else interval["low"] > 0


def current_entry(registry: Path) -> dict[str, Any] | None:
    """The promoted version's record, or None before the first promotion."""
    path = Path(registry) / CURRENT
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise BundleError(f"{path}: unreadable registry pointer ({err})") from None
    if not isinstance(entry, dict):
        raise BundleError(f"{path}: unreadable registry pointer (not a JSON object)")
    return entry


def tree_digest(directory: Path) -> str:
    """SHA-256 over every file's relative path and bytes: tells a retrained model from the same one."""
    digest = hashlib.sha256()
    root = Path(directory)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def promote(registry: Path, models: Path, metrics: dict[str, Any], decision: Decision) -> str:
    """Copy `models/` into a new version directory, then point current.json at it; the version name."""
    registry = Path(registry)
    version = f"v{_last_version(registry) + 1:04d}"
    with atomic_dir(registry / version) as tmp:
        shutil.copytree(models, tmp / MODEL)
        write_json(metrics, tmp / METRICS)
    # The pointer moves only after the version is complete, so a crash leaves the old one served.
    write_json(
        {
            "version": version,
            "metric": decision.metric,
            "value": decision.candidate,
            "models_digest": tree_digest(models),
            "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        registry / CURRENT,
    )
    return version


def record(registry: Path, decision: Decision, version: str | None) -> None:
    """Append a decision to history.json (rewritten atomically: runs are rare, the file small)."""
    path = Path(registry) / HISTORY
    history = json.loads(path.read_text()) if path.is_file() else []
    history.append(
        {
            **asdict(decision),
            "version": version,
            "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    write_json(history, path)


def resolve_model_dir(path: Path) -> Path:
    """A bundle directory, or a registry (then its current version's bundle).

    The path must be an existing directory (a symlink loop, a NUL byte or a file is a one-line
    BundleError), and the pointer must name a version directory of this registry: a
    `"version": "../../elsewhere"` would otherwise load a bundle from outside it.
    """
    path = check_model_path(path)
    entry = current_entry(path)
    if entry is None:
        return path
    version = entry.get("version")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise BundleError(f"{path / CURRENT}: {version!r} is not a version of this registry (vNNNN)")
    target = path / version / MODEL
    if not target.is_dir():
        raise BundleError(f"{path / CURRENT} names {version}, but {target} does not exist")
    return target


def _last_version(registry: Path) -> int:
    if not registry.is_dir():
        return 0
    numbers = [int(m.group(1)) for p in registry.iterdir() if (m := _VERSION.match(p.name)) and p.is_dir()]
    return max(numbers, default=0)
