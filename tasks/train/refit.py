"""Refit: the members the ensemble kept, fitted again on the train and val rows together.

The val rows choose each member's epochs (or boosting rounds), the scikit-learn member's
strength and the ensemble's weights. Once those are chosen the rows have nothing left to
decide, yet on a small table they are a fifth more labels (15 % of the rows beside train's
70 %). So each kept member is trained afresh on train + val for the epochs or rounds val chose
for it, with the same settings and seed, and replaces its train-only fit; the weights stay
(the technique AutoGluon calls refit_full). On bench/real.py's splits, the mean test accuracy
over five `train.seed`s went from 0.832 to 0.862 on pokemon `type1` (680 train + val rows) and
from 0.944 to 0.951 on flipkart `category_l1`; PetFinder, whose heads stop after an epoch or
two, moved by -0.002, inside its noise.

Not refit: fine-tuned members (a second fine-tuning costs what the first did), members the
ensemble left out (nothing serves them), and a member whose refit would end past
`train.time_limit`'s deadline (its train-only fit is kept, and the record says why).

After a refit the model has learned from the val rows: the bundle's lineage says so
(`fitted`), so the monitor takes them as reference rows and calibrates CBPE on the test rows
alone, and evaluate reports the val scores measured before the refit, the ones that chose.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from tasks.config import Params
from tasks.scores.model_names import FUSED, FUSED_HEAD
from tasks.train.assemble import rows_in_order
from tasks.train.boosted import BoostedResult, refit_boosted
from tasks.train.dataset import REFIT_SPLITS, FeatureSet
from tasks.train.finetuned_member import FinetunedResult
from tasks.train.members import SKLEARN_LINEAR
from tasks.train.plan import Budget, MemberSpec, Skipped
from tasks.train.portable_linear import PortableLinear
from tasks.train.sklearn_baseline import LINEAR_STRENGTHS, refit_linear_member
from tasks.train.training import TrainResult, refit_model

Fitted = TrainResult | BoostedResult


class LinearFit(NamedTuple):
    """The linear member with what its refit needs: the strength val chose, its fit's seconds."""

    model: PortableLinear
    strength: float
    seconds: float


@dataclass
class Refitted:
    """The members after refit: those refit replace their train-only fits."""

    trained: dict[str, tuple[MemberSpec, Fitted]]
    linear: LinearFit | None
    record: dict[str, Any] = field(default_factory=dict)  # ensemble.json's "refit"; {} when none was

    @property
    def fitted_splits(self) -> tuple[str, ...]:
        """The splits the final model has learned from (the lineage's `fitted`)."""
        return REFIT_SPLITS if self.record.get("members") else ("train",)


def refit_members(
    chosen: Iterable[str],
    trained: Mapping[str, tuple[MemberSpec, Fitted]],
    linear: LinearFit | None,
    features: FeatureSet,
    aligned: pd.DataFrame,
    params: Params,
    budget: Budget,
) -> Refitted:
    """Each of the `chosen` members refit on train + val where it can be (module docstring)."""
    chosen = set(chosen)
    out = Refitted(dict(trained), linear)
    rows = int(np.isin(features.split, REFIT_SPLITS).sum())
    growth = refit_growth(features)
    done: list[str] = []
    kept: dict[str, str] = {}
    if linear is not None and SKLEARN_LINEAR in chosen:
        reason = _over_budget(budget, refit_seconds(linear, growth))
        if reason is None:
            model = refit_linear_member(
                aligned, params.data.columns, params.data.task, linear.strength, features.classes,
                params.evaluate.baseline_max_rows,
            )  # fmt: skip
            out.linear = linear._replace(model=model)
            done.append(SKLEARN_LINEAR)
        else:
            kept[SKLEARN_LINEAR] = reason
    for name, (spec, result) in trained.items():
        if name not in chosen:
            continue
        if isinstance(result, FinetunedResult):
            kept[name] = "fine-tuned: a second fine-tuning would cost what the first did"
            continue
        reason = _over_budget(budget, refit_seconds(result, growth))
        if reason is not None:
            kept[name] = reason
            continue
        member_rows = features if spec.modalities is None else features.only_modalities(set(spec.modalities))
        out.trained[name] = (spec, _refit(spec, result, member_rows, aligned, params))
        done.append(name)
    if done or kept:
        out.record = {"rows": rows, "members": sorted(done), **({"kept": kept} if kept else {})}
    return out


def val_before_refit(ensemble: Mapping[str, Any]) -> dict[str, float]:
    """evaluate's val scores (its names: FUSED is the final model) measured before the refit,
    for the models a refit has since shown the val rows; {} without a refit."""
    refit = set((ensemble.get("refit") or {}).get("members", []))
    if not refit:
        return {}
    scores = {
        (FUSED_HEAD if t["name"] == FUSED else t["name"]): t["val"]
        for t in ensemble.get("tried", [])
        if t.get("name") in refit and "val" in t
    }
    if "val" in ensemble:
        scores[FUSED] = ensemble["val"]
    elif len(ensemble.get("members", {})) == 1:  # train.ensemble: false, one model served
        (only,) = ensemble["members"]
        scores[FUSED] = scores.get(FUSED_HEAD if only == FUSED else only, float("nan"))
    return scores


def _refit(
    spec: MemberSpec, result: Fitted, features: FeatureSet, aligned: pd.DataFrame, params: Params
) -> Fitted:
    """`result` fitted again on train + val; its history and best epoch (val's) stay, its seconds add."""
    if isinstance(result, BoostedResult):
        started = time.perf_counter()
        model = refit_boosted(result.model, features, rows_in_order(aligned, features.ids),
                              spec.train.class_weight, dict(spec.searched) or None)  # fmt: skip
        return replace(
            result, model=model, train_seconds=result.train_seconds + time.perf_counter() - started
        )
    again = refit_model(features, params.data.task, spec.fusion, spec.train, max(1, result.best_epoch), False)
    return replace(result, model=again.model, target_scaling=again.target_scaling,
                   train_seconds=result.train_seconds + again.train_seconds)  # fmt: skip


def refit_growth(features: FeatureSet) -> float:
    """How much longer a refit's epoch or round is than training's: train + val rows over train's."""
    return int(np.isin(features.split, REFIT_SPLITS).sum()) / max(1, int((features.split == "train").sum()))


def refit_seconds(result: Fitted | LinearFit | Skipped | None, growth: float) -> float:
    """What refitting `result` on train + val would take: the share of its fit that found the
    kept epoch or round (the linear member: one of the strengths it tried), times `growth`.
    Nothing for what is never refit: a fine-tuned member, one skipped, none."""
    if isinstance(result, LinearFit):
        return result.seconds / len(LINEAR_STRENGTHS) * growth
    if result is None or isinstance(result, Skipped | FinetunedResult):
        return 0.0
    if isinstance(result, BoostedResult):
        bags = result.model.info["bags"]
        share = sum(b["best_round"] for b in bags) / max(1, sum(b["rounds"] for b in bags))
    else:
        share = max(1, result.best_epoch) / max(1, len(result.history))
    return result.train_seconds * share * growth


@dataclass
class RefitReserve:
    """The time that refitting the members trained so far would take, kept back from the next.

    With members trained one after another, each one's deadline is the refit's own less what
    refitting those before it would cost, measured on them: on pokemon under `preset: best`
    with a 120 s limit, the boosted member's refit needed 23 s where a fixed tenth of the time
    (REFIT_SHARE) left 10, so the booster kept its train-only fit. The sum
    covers every member, kept or not: which ones the ensemble keeps is known only after them.
    """

    budget: Budget  # the refit's deadline
    growth: float  # refit_growth
    seconds: float = 0.0

    def add(self, result: Fitted | LinearFit | Skipped | None) -> None:
        self.seconds += refit_seconds(result, self.growth)

    def members_budget(self) -> Budget:
        """The next member's budget: the refit's, less the time kept back."""
        return self.budget.less(self.seconds)


def _over_budget(budget: Budget, seconds: float) -> str | None:
    left = budget.left()
    if left is None or seconds <= left:
        return None
    return f"train.time_limit: refit needs about {seconds:.0f} s, {left:.0f} s left"
