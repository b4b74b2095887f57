"""Champion against challenger on the same rows: the promoted model re-scored on today's splits.

A metric stored by an earlier run was measured on that run's test rows; comparing it with
today's number compares two different samples. Here both models predict the rows of today's
test split (through batch prediction's path and the row-level feature cache, so known rows
cost no encoding), and the difference gets a paired bootstrap interval.

Honest means two things the rows and the labels must both get right:

- Rows: only rows that neither model trained or early-stopped on. With unchanged split
  settings the hash split keeps every row where it was, so today's test rows are the
  champion's too. After `data.split.seed`, `fractions`, `group` or `column` changed, many of
  today's test rows were the champion's train rows; those are left out, found by id in the
  champion's lineage (tasks/train/lineage.py) or, for a bundle older than lineage, by
  recomputing its split from the settings it recorded. When too few rows are left, or an old
  champion's split cannot be recomputed, the comparison is refused in one line.
- Labels: each model's probabilities are read through its own class list. A binary
  champion whose positive class was another label is scored on 1 - p; changed class sets are
  compared over the classes both know, on the rows whose class both know. Every such change
  is named in `SameRows.notes`, which the promotion artifact shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from tasks.config import SplitConfig
from tasks.data.align import hash_split
from tasks.data.labels import from_canonical
from tasks.device import pick_device
from tasks.errors import FuselineError
from tasks.evaluate.evaluation import bootstrap_intervals, primary_score
from tasks.features.cache import FeatureCache
from tasks.schema import ID, SPLIT, TARGET
from tasks.scores.model_names import FUSED
from tasks.serve.predict import Predictor, file_roots, load_predictor
from tasks.train.bundle import BundleMeta
from tasks.train.lineage import Lineage, read_lineage

CHAMPION = "champion"
# Fewest test rows a comparison may rest on once rows had to be left out (a changed split or
# class set): below it the paired interval spans nearly everything and the decision is noise.
MIN_SHARED_ROWS = 30


class NotComparable(FuselineError):
    """The models cannot be scored on rows and labels that are fair to both; the reason in one line."""


@dataclass(frozen=True)
class SameRows:
    """Both models' primary metric on the same rows, and the paired interval of their difference."""

    metric: str
    rows: int
    candidate: float
    champion: float
    interval: dict[str, float]  # candidate minus champion: {"low", "high"}
    val: dict[str, float] | None  # {"candidate", "champion"} on val rows both early-stopped on
    left_out: int = 0  # today's test rows the champion trained or early-stopped on (a changed split)
    notes: tuple[str, ...] = ()  # what changed between the two models and how the comparison handles it

    def to_json(self) -> dict:
        return {**self.__dict__, "notes": list(self.notes)}


def compare_on_same_rows(
    champion_dir: Path, candidate_dir: Path, aligned: pd.DataFrame, metric: str, cache_dir: str | Path
) -> SameRows:
    """Score both bundles on today's test rows held out by both (decision) and shared val rows (shown).

    Both are scored by `metric`, the current params' `evaluate.metric` (metrics.json's
    `primary_metric`), whatever metric the champion was selected on when it was trained.

    Raises NotComparable when no honest comparison exists (see the module docstring), and
    DataError when the champion cannot read today's rows (a column it needs is gone).
    """
    cache = FeatureCache(cache_dir)
    champion, candidate = load_predictor(champion_dir, cache), load_predictor(candidate_dir, cache)
    space = label_space(champion.meta, candidate.meta)
    held = held_out_by_both(champion.meta, champion_dir, candidate.data.split, aligned)
    notes = (*held.notes, *space.notes)
    test_rows = aligned[held.test]
    known = space.known(test_rows[TARGET])
    if held.left_out or not known.all():  # rows were left out: enough must remain to decide on
        _require_enough(int(known.sum()), int(held.test.sum()) + held.left_out, notes)
    test = _scored(test_rows[known], space, champion, candidate, cache)
    val_rows = aligned[held.val]
    val_rows = val_rows[space.known(val_rows[TARGET])]
    val = _scored(val_rows, space, champion, candidate, cache) if len(val_rows) else None
    task = space.task
    both = {FUSED: test.candidate, CHAMPION: test.champion}
    intervals = bootstrap_intervals(task, test.truth, both, metric=metric)
    return SameRows(
        metric=metric,
        rows=len(test.truth),
        candidate=primary_score(task, test.truth, test.candidate, metric),
        champion=primary_score(task, test.truth, test.champion, metric),
        interval=intervals[f"{FUSED}_minus_{CHAMPION}"],
        val=None
        if val is None
        else {
            "candidate": primary_score(task, val.truth, val.candidate, metric),
            "champion": primary_score(task, val.truth, val.champion, metric),
        },
        left_out=held.left_out,
        notes=notes,
    )


def _require_enough(rows: int, test_rows: int, notes: tuple[str, ...]) -> None:
    """Refuse a decision resting on too few rows, rather than fill them up with leaked ones."""
    if rows < MIN_SHARED_ROWS:
        raise NotComparable(
            f"{'; '.join(notes)}; that leaves only {rows} of today's {test_rows} test rows, fewer than the "
            f"{MIN_SHARED_ROWS} a comparison needs; restore the settings the promoted model was trained "
            "with, or start a new registry (schedule.registry) to promote under the new ones"
        )


# --- labels: each model read through its own classes ----------------------------------------------


@dataclass(frozen=True)
class LabelSpace:
    """The labels both models are scored over, in the candidate's order, and how each maps into it."""

    task: str
    classes: tuple[str, ...]  # shared classes; for binary (negative, positive) as the candidate has them
    notes: tuple[str, ...] = ()

    def known(self, target: pd.Series) -> np.ndarray:
        """Rows whose truth both models can be scored on: a class both know (all rows otherwise)."""
        if self.task in ("binary", "multiclass"):
            return target.astype(str).isin(self.classes).to_numpy()
        return np.ones(len(target), dtype=bool)

    def truth(self, target: pd.Series) -> np.ndarray:
        """The known rows' truth in this space: 0/1 for the positive class, class indices, or indicators."""
        if self.task == "regression":
            return target.astype("float64").to_numpy(dtype=np.float32)
        if self.task == "multilabel":
            rows = [set(from_canonical(str(v))) for v in target]
            return np.array([[c in row for c in self.classes] for row in rows], dtype=np.float32).reshape(
                len(rows), len(self.classes)
            )
        labels = target.astype(str)
        if self.task == "binary":
            return (labels == self.classes[1]).to_numpy(dtype=np.float32)
        index = {c: i for i, c in enumerate(self.classes)}
        return labels.map(index).to_numpy(dtype=np.int64)

    def scores(self, predictions: np.ndarray, own: tuple[str, ...]) -> np.ndarray:
        """A model's predictions, made over its own classes `own`, as scores over this space's classes."""
        if self.task == "regression":
            return predictions
        matrix = np.asarray(predictions, dtype=np.float64)
        if self.task == "binary":
            matrix = np.stack([1.0 - matrix, matrix], axis=1)  # (N, 2): P(own[0]), P(own[1])
        matrix = matrix[:, [own.index(c) for c in self.classes]]
        if self.task == "binary":
            return matrix[:, 1]  # the probability of the candidate's positive class
        if self.task == "multiclass":  # the probability of each shared class, given one of them
            total = matrix.sum(axis=1, keepdims=True)
            return np.divide(matrix, total, out=np.full_like(matrix, 1 / matrix.shape[1]), where=total > 0)
        return matrix


def label_space(champion: BundleMeta, candidate: BundleMeta) -> LabelSpace:
    """Where both models' predictions can be scored alike; NotComparable when nowhere.

    The candidate's classes (today's data) set the order and, for binary, the positive class.
    """
    if champion.task != candidate.task:
        raise NotComparable(
            f"the task changed ({champion.task} -> {candidate.task}) since the promoted model was trained, "
            "so their metrics measure different things; start a new registry (schedule.registry) to "
            "promote models of the new task"
        )
    task = candidate.task
    if task == "regression":
        return LabelSpace(task, ())
    shared = tuple(c for c in candidate.classes if c in champion.classes)
    kind = "labels" if task == "multilabel" else "classes"
    change = _class_change(kind, champion.classes, candidate.classes)
    if len(shared) < (1 if task == "multilabel" else 2):
        raise NotComparable(
            f"{change}: the two models share {len(shared)} {kind} {list(shared)}, too few to compare them "
            "on; start a new registry (schedule.registry) to promote models of the new classes"
        )
    notes = []
    if change:
        rows = "" if task == "multilabel" else ", on the rows whose class both know"
        notes.append(f"{change}: compared over the {len(shared)} {kind} both know{rows}")
    if task == "binary" and champion.classes[1] != candidate.classes[1]:
        old, new = champion.classes[1], candidate.classes[1]
        notes.append(
            f"positive class changed: data.positive_class {old!r} -> {new!r}; both models are scored for "
            f"{new!r} (the promoted model's probability of it is 1 - its probability of {old!r})"
        )
    return LabelSpace(task, shared, tuple(notes))


def _class_change(kind: str, champion: tuple[str, ...], candidate: tuple[str, ...]) -> str:
    """What changed in the label set, in words (empty when nothing did)."""
    added = [c for c in candidate if c not in champion]
    removed = [c for c in champion if c not in candidate]
    if not (added or removed):
        return ""
    return f"{kind} changed since the promoted model (added {added}, removed {removed})"


# --- rows: held out by both ------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOut:
    """Boolean masks over today's aligned rows, and what the split change left out."""

    test: np.ndarray  # today's test rows the champion neither trained nor early-stopped on
    val: np.ndarray  # today's val rows that were the champion's val rows too
    left_out: int  # today's test rows the champion trained or early-stopped on
    notes: tuple[str, ...] = ()


def held_out_by_both(
    champion: BundleMeta, champion_dir: Path, candidate: SplitConfig, aligned: pd.DataFrame
) -> HeldOut:
    """Today's test (and val) rows, less those the champion saw in training or early stopping.

    The champion's own rows come from its lineage (the ids it was trained, validated and
    tested on) when its bundle keeps one, which holds whatever changed; for older bundles they
    are recomputed from the split settings it recorded (`champion_splits`).
    """
    today = aligned[SPLIT].to_numpy(dtype=str)
    theirs = recorded_split(champion)
    changes = split_changes(theirs, candidate)
    lineage = read_lineage(Path(champion_dir), champion.lineage)
    if lineage is not None:
        their_rows = lineage_splits(lineage, aligned)
    elif changes:
        their_rows = champion_splits(theirs, candidate, aligned)
    else:  # a stable split under unchanged settings: today's test rows are its test rows
        return HeldOut(today == "test", today == "val", 0)
    seen = np.isin(their_rows, ("train", "val"))
    test, left_out = (today == "test") & ~seen, int(((today == "test") & seen).sum())
    notes: tuple[str, ...] = ()
    if changes or left_out:
        what = (
            f"split changed since the promoted model ({', '.join(changes)})"
            if changes
            else "the promoted model's lineage holds some of today's test rows as train or val rows"
        )
        notes = (
            f"{what}: compared on the test rows held out by both; {left_out} of today's test rows "
            "were the promoted model's train or val rows and are left out",
        )
    return HeldOut(test, (today == "val") & (their_rows == "val"), left_out, notes)


def lineage_splits(lineage: Lineage, aligned: pd.DataFrame) -> np.ndarray:
    """Each of today's rows' split in the champion's lineage, by id: train | val | test | new.

    By id, not content: a row edited since (a fixed typo, a relabelled target) was still
    trained on, and scoring the champion on it would flatter it.
    """
    theirs = pd.Series(lineage.rows[SPLIT].astype(str).to_numpy(), index=lineage.rows[ID].astype(str))
    return theirs.reindex(aligned[ID].astype(str).to_numpy()).fillna("new").to_numpy(dtype=str)


def recorded_split(meta: BundleMeta) -> SplitConfig | None:
    """The split settings a bundle was trained with, from its params; None when it does not say.

    Bundles store every setting, defaults included, so a key missing from an older bundle is
    one that did not exist then, and today's default is what that code did.
    """
    data = meta.params.get("data")
    recorded = data.get("split") if isinstance(data, dict) else None
    if not isinstance(recorded, dict):
        return None
    try:
        return SplitConfig.model_validate(recorded)
    except ValidationError:
        return None


def split_changes(theirs: SplitConfig | None, ours: SplitConfig) -> list[str]:
    """`data.split.<key> old -> new` for each setting that moves rows between splits."""
    if theirs is None:
        return ["data.split: the promoted model's bundle does not record it"]
    old, new = _split_settings(theirs), _split_settings(ours)
    return [f"data.split.{key} {old[key]!r} -> {new[key]!r}" for key in old if old[key] != new[key]]


def _split_settings(split: SplitConfig) -> dict[str, Any]:
    """The settings that decide which rows a model trains on (`dedupe` only refuses leaks)."""
    fractions = split.fractions
    return {
        "method": split.method,
        "seed": split.seed,
        "column": split.column,
        "group": split.group,
        **{f"fractions.{name}": getattr(fractions, name) for name in ("train", "val", "test")},
    }


def champion_splits(theirs: SplitConfig | None, ours: SplitConfig, aligned: pd.DataFrame) -> np.ndarray:
    """Each of today's rows' split as the champion's own settings put it: train | val | test.

    Recomputed with align's hash split where the settings and the ids alone decide it. With
    the same split column, test rows are the column's own (seed and fractions only carve val
    out of train), so every other row counts as seen. Otherwise (a group or another column,
    whose values aligned.parquet does not keep; a stratified draw; no record) NotComparable.
    """
    if theirs is not None and theirs.column is not None:
        if theirs.column == ours.column:
            today = aligned[SPLIT].to_numpy(dtype=str)
            return np.where(today == "test", "test", "train")
    elif theirs is not None and theirs.method == "hash" and theirs.group is None:
        ids = aligned[ID].to_numpy(dtype=object)
        return hash_split(ids, theirs.seed, theirs.fractions.train, theirs.fractions.val)
    raise NotComparable(
        f"split changed since the promoted model ({', '.join(split_changes(theirs, ours))}), and which of "
        "today's rows it trained on cannot be recomputed from the aligned table, so any comparison "
        "could leak them; "
        "restore the settings it was trained with, or start a new registry (schedule.registry) to "
        "promote under the new ones"
    )


# --- scoring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scored:
    truth: np.ndarray
    candidate: np.ndarray
    champion: np.ndarray


def _scored(
    rows: pd.DataFrame, space: LabelSpace, champion: Predictor, candidate: Predictor, cache: FeatureCache
) -> _Scored:
    """Both models' scores for rows whose truth both know, each read through its own classes."""
    rows = rows.reset_index(drop=True)
    return _Scored(
        truth=space.truth(rows[TARGET]),
        candidate=space.scores(_predict(candidate, rows, cache), candidate.meta.classes),
        champion=space.scores(_predict(champion, rows, cache), champion.meta.classes),
    )


def _predict(predictor: Predictor, rows: pd.DataFrame, cache: FeatureCache) -> np.ndarray:
    """The bundle's served predictions (its ensemble) for aligned rows, as arrays."""
    return predictor.predictions(rows, file_roots(predictor.data), cache, pick_device("auto"))[1]
