"""What a reader sees first: the headline DVC shows, the verdict, and the leaderboard.

All three are read from the detail evaluate writes (reports/evaluation.json: metrics_report's
output plus `val`, `ensemble`, `members`), never recomputed, so the report's first sentence,
the columns of `dvc exp show` and `fuseline leaderboard` cannot disagree.

The final model is judged against every baseline a user could have had without fusing: each
single-modality model, the scikit-learn model on the raw table, and the majority class (or
train mean). The fused head alone is not one: it is a part of the final model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from tasks.evaluate.evaluation import single_modalities
from tasks.evaluate.leaderboard import COLUMNS
from tasks.scores.model_names import FUSED, FUSED_HEAD, MAJORITY, MEAN, PRIOR_LABELS, SKLEARN

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no detectable difference"
UNDEFINED = "undefined"  # the interval could not be computed (AUC of a one-class test split)


def baseline_names(detail: dict) -> list[str]:
    """The models the final model is judged against, by name: every baseline but fused_head."""
    return sorted(name for name in detail["baselines"] if name != FUSED_HEAD)


def best_baseline(detail: dict) -> str | None:
    """The baseline with the best test score of the chosen metric; None when none has a score.

    Picked on test, unlike the report's "best single modality" (picked on val): the strongest
    baseline on the very rows of the comparison can only make "better" harder to earn. Ties go
    to the first name in sorted order, so the choice is stable across reruns.
    """
    primary, higher = detail["primary_metric"], detail["intervals"]["higher_is_better"]
    scores = {name: float(detail["baselines"][name][primary]) for name in baseline_names(detail)}
    defined = {name: value for name, value in scores.items() if math.isfinite(value)}
    if not defined:
        return None
    return (max if higher else min)(defined, key=defined.__getitem__)


def judge(low: float, high: float, higher_is_better: bool) -> str:
    """Better, worse or no detectable difference, from the interval of final minus a baseline.

    Better only when the whole interval lies on the good side of 0 (above it for a score,
    below it for an error), worse when it lies wholly on the other side.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        return UNDEFINED
    above, below = low > 0, high < 0
    if not (above or below):
        return NO_DIFFERENCE
    return BETTER if above == higher_is_better else WORSE


@dataclass(frozen=True)
class Verdict:
    """The final model against the best baseline, with the paired bootstrap interval of the gap."""

    outcome: str  # BETTER, WORSE, NO_DIFFERENCE or UNDEFINED
    metric: str
    final: float
    baseline: str
    baseline_value: float
    difference: float  # final minus the baseline, in the metric's units
    low: float
    high: float
    level: float


def verdict(detail: dict) -> Verdict | None:
    """The verdict on `detail`, or None when there is no baseline with a score to compare with."""
    best = best_baseline(detail)
    if best is None:
        return None
    primary, intervals = detail["primary_metric"], detail["intervals"]
    final, value = float(detail["test"][primary]), float(detail["baselines"][best][primary])
    gap = intervals.get(f"{FUSED}_minus_{best}") or {"low": math.nan, "high": math.nan}
    low, high = float(gap["low"]), float(gap["high"])
    return Verdict(
        outcome=judge(low, high, intervals["higher_is_better"]),
        metric=primary,
        final=final,
        baseline=best,
        baseline_value=value,
        difference=final - value,
        low=low,
        high=high,
        level=float(intervals.get("level", 0.95)),
    )


def headline(detail: dict) -> dict:
    """reports/metrics.json: the few numbers `dvc exp show` and `dvc metrics diff` compare.

    `metric` names the chosen metric; `final` is the final model's value of it and `test` all
    its test metrics; one key per baseline (each modality, `sklearn`, `majority` or `mean`)
    holds that baseline's value; `best_baseline`, `final_minus_best` and its interval `low`,
    `high` say whether the final model beats the best of them. At most 4 + 2 + 5 + the task's
    metrics keys once DVC flattens them; everything else is in reports/evaluation.json.
    """
    primary = detail["primary_metric"]
    summary: dict = {"metric": primary, "final": detail["test"][primary], "test": dict(detail["test"])}
    summary |= {name: detail["baselines"][name][primary] for name in baseline_names(detail)}
    judged = verdict(detail)
    if judged is not None:
        summary |= {
            "best_baseline": judged.baseline,
            "final_minus_best": judged.difference,
            "low": judged.low,
            "high": judged.high,
        }
    return summary


def model_label(name: str, sklearn_selected: str | None = None) -> str:
    """How the report names a baseline: `tabular only`, `sklearn (hist_gradient_boosting)`..."""
    if name == SKLEARN:
        return f"sklearn ({sklearn_selected})" if sklearn_selected else "sklearn"
    if name in (MAJORITY, MEAN):
        return PRIOR_LABELS[name]
    if name == FUSED_HEAD:
        return "fused head alone"
    return f"{name} only"


# --- the leaderboard --------------------------------------------------------------------


def leaderboard_table(detail: dict, sklearn_seconds: float | None = None) -> pd.DataFrame:
    """Every model evaluate knows of, with its val and test metric and training seconds, best first.

    The final model, then each member train fitted (the fused head, the single modalities,
    other heads and seeds, fine-tuned encoders, the scikit-learn linear member) with its
    ensemble weight, then evaluate's scikit-learn baseline and the majority/mean baseline, then
    the trials of `train.preset: best`'s search (a val score each, no test score).
    A member's val score is evaluate's where it made one (the fused head, single modalities),
    else what train recorded in ensemble.json (what the ensemble was chosen on); `seconds` are
    train's wall seconds (member_seconds.json). `sklearn_seconds`, evaluate's own fit of the
    baseline, is for callers that show it; evaluate's files leave it out, so that a rerun
    writes the same bytes (a killed evaluate leaves each file old or new, never a third).
    """
    primary = detail["primary_metric"]
    rows = [_final_row(detail)] + _member_rows(detail) + _trial_rows(detail)
    baselines, val = detail["baselines"], detail.get("val", {})
    if SKLEARN in baselines:
        selected = (detail.get("sklearn") or {}).get("selected")
        rows.append(
            _row(SKLEARN, f"scikit-learn baseline ({selected or '?'})", None, val.get(SKLEARN),
                 baselines[SKLEARN][primary], sklearn_seconds)
        )  # fmt: skip
    for name in (MAJORITY, MEAN):
        if name in baselines:  # counting the train targets: no training time to speak of
            rows.append(_row(name, PRIOR_LABELS[name], None, val.get(name), baselines[name][primary], 0.0))
    frame = pd.DataFrame(rows, columns=COLUMNS[:-1])
    frame["metric"] = primary
    frame = frame.astype({"weight": "float64", "val": "float64", "test": "float64", "seconds": "float64"})
    higher = detail["intervals"]["higher_is_better"]
    return frame.sort_values("test", ascending=not higher, na_position="last", kind="stable").reset_index(
        drop=True
    )


def _row(model: str, role: str, weight: float | None, val: float | None, test: float | None,
         seconds: float | None) -> dict:  # fmt: skip
    nan = math.nan
    return {
        "model": model,
        "role": role,
        "weight": nan if weight is None else weight,
        "val": nan if val is None else val,
        "test": nan if test is None else test,
        "seconds": nan if seconds is None else seconds,
    }


def _final_row(detail: dict) -> dict:
    """The model prediction serves: the ensemble, or one member alone; its time is its members'."""
    ensemble = detail.get("ensemble") or {}
    weights = ensemble.get("members") or {FUSED: 1.0}
    seconds = {t["name"]: t.get("seconds") for t in ensemble.get("tried", [])}
    spent = [seconds.get(name) for name in weights]
    total = sum(spent) if spent and all(s is not None for s in spent) else None
    role = (
        f"final model: {next(iter(weights))} alone"
        if len(weights) == 1
        else f"final model: ensemble of {len(weights)}"
    )
    primary = detail["primary_metric"]
    return _row("final", role, None, detail.get("val", {}).get(FUSED), detail["test"][primary], total)


def _member_rows(detail: dict) -> list[dict]:
    """One row per member train fitted, in the order train tried them."""
    primary = detail["primary_metric"]
    ensemble = detail.get("ensemble") or {}
    weights = ensemble.get("members") or {}
    tried = {t["name"]: t for t in ensemble.get("tried", [])}
    members = detail.get("members") or {}
    singles = set(single_modalities(detail["baselines"]))
    val = detail.get("val", {})
    rows = []
    for name, metrics in members.items():
        entry = tried.get(name, {})
        rows.append(
            _row(name, _member_role(name, entry, singles), weights.get(name, 0.0) if ensemble else None,
                 _member_val(name, entry, val), metrics.get(primary), entry.get("seconds"))
        )  # fmt: skip
    return rows


def _trial_rows(detail: dict) -> list[dict]:
    """The hyperparameter search's trials (`train.preset: best`): the val score each reached and
    its seconds; no test score, as no trial is a model (each search's winner is a member above)."""
    tried = (detail.get("ensemble") or {}).get("tried", [])
    return [
        _row(t["name"], _trial_role(t), None, t.get("val"), None, t.get("seconds"))
        for t in tried
        if t.get("kind") == "search"
    ]


def _trial_role(entry: dict) -> str:
    """`search trial of fused`, with how it ended when it did not complete (pruned, failed)."""
    return str(entry.get("status", "search trial")).replace(
        "search trial", f"search trial of {entry.get('searched')}", 1
    )


def _member_val(name: str, entry: dict, val: dict) -> float | None:
    """Evaluate's val score where it made one (same rows, same metric), else train's.

    The fused head's own score is `fused_head`; when it is the final model alone evaluate
    records it as `fused` instead.
    """
    key = FUSED_HEAD if name == FUSED else name
    if key in val:
        return val[key]
    if "val" in entry:
        return entry["val"]
    return val.get(FUSED) if name == FUSED else None


def _member_role(name: str, entry: dict, singles: set[str]) -> str:
    """What a member is, in words, from its name and what train recorded of it."""
    kind = entry.get("kind", "head")
    if name == FUSED:
        return "fused head (all modalities)"
    if name in singles:
        return "single modality"
    if kind == "sklearn":
        return "scikit-learn linear member"
    searched = ", tuned by the search" if entry.get("searched") else ""  # fused_tuned, boosted_tuned
    if kind == "head":
        head, seed = entry.get("head"), entry.get("seed")
        label = f"{head or 'fusion'} head, seed {seed}" if seed is not None else f"{head or 'fusion'} head"
        return label + searched
    return kind.replace("_", " ") + searched
