"""A comparison judged against `monitor.threshold`: the record every report line is made of.

A run asks twenty-odd questions (a few per column), so at alpha = 0.01 each, a batch with
no drift at all would still be flagged on some run in five. `holm` adjusts the p-values of
a run's checks together (Holm-Bonferroni), so that `alpha` is what a user reads it as: the
chance that a run over undrifted data reports drift anywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from tasks.config import DriftThresholds
from tasks.monitor.statistics import Comparison

PREDICTION = "prediction"  # the column name of checks on the model's output

# What an effect size is when nothing has changed: the zero of the bar chart (schema: see
# schema.py; shortfall: the realized metric below its expected level, performance.py).
_BASELINE = {"psi": 0.0, "auc": 0.5, "missing": 0.0, "unseen": 0.0, "schema": 0.0, "shortfall": 0.0}


@dataclass(frozen=True)
class Check:
    """One question asked of one column: did its distribution, missing share, ... move?"""

    column: str  # the source column, or "prediction"
    role: str  # numeric | categorical | text | image | audio | prediction
    aspect: str  # distribution | missing | unseen | embedding | predicted class | score | schema
    test: str
    statistic: float
    p_value: float  # of this test alone
    p_adjusted: float  # for every check of the run (holm); what `drifted` compares with alpha
    effect: str  # psi | auc | missing | unseen | schema (a changed column: schema.py) | shortfall
    score: float
    threshold: float
    drifted: bool
    detail: str
    reference_rows: int
    batch_rows: int

    @property
    def severity(self) -> float:
        """The effect as a share of the way from no change to its threshold: 1.0 is the threshold."""
        baseline = _BASELINE[self.effect]
        return (self.score - baseline) / (self.threshold - baseline)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"severity": round(self.severity, 4)}


def judge(column: str, role: str, aspect: str, comparison: Comparison, thresholds: DriftThresholds) -> Check:
    """Drift when the test is significant (p < alpha) and the effect reaches its kind's threshold.

    Significance alone would flag negligible shifts in a large batch; the effect size alone
    would flag noise in a small one. Requiring both keeps the rule meaningful at any size.
    This judges the check on its own; `holm` then judges a run's checks together.
    """
    threshold = float(getattr(thresholds, comparison.effect))
    check = Check(
        column=column,
        role=role,
        aspect=aspect,
        test=comparison.test,
        statistic=float(comparison.statistic),
        p_value=float(comparison.p_value),
        p_adjusted=float(comparison.p_value),
        effect=comparison.effect,
        score=float(comparison.score),
        threshold=threshold,
        drifted=False,
        detail=comparison.detail,
        reference_rows=comparison.reference_rows,
        batch_rows=comparison.batch_rows,
    )
    return replace(check, drifted=_drifted(check, thresholds.alpha))


def holm(checks: list[Check], thresholds: DriftThresholds) -> list[Check]:
    """The checks, in order, with Holm-Bonferroni adjusted p-values and judged on those.

    Holm controls the chance of any false alarm in the run at alpha, like Bonferroni, but
    multiplies the k-th smallest p-value by (m - k + 1) rather than by m, so a clear shift
    is not hidden by how many other columns happen to be checked.
    """
    if not checks:
        return []
    p = np.array([check.p_value for check in checks])
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    out = []
    for check, p_adjusted in zip(checks, adjusted, strict=True):
        check = replace(check, p_adjusted=float(p_adjusted))
        out.append(replace(check, drifted=_drifted(check, thresholds.alpha)))
    return out


def _drifted(check: Check, alpha: float) -> bool:
    return bool(check.p_adjusted < alpha and check.score >= check.threshold)
