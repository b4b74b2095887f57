"""The names the scored models go by, in metrics, reports and the ensemble's members.

Training plans and blends members under these names, evaluation reports them, promotion
compares on the final one: kept here, below all three, so that naming the final model does
not mean importing evaluation.
"""

from __future__ import annotations

FUSED = "fused"  # the final model: the ensemble chosen on val, or the fused head alone
FUSED_HEAD = "fused_head"  # the fused head by itself, reported when an ensemble is the final model
SKLEARN = "sklearn"
MAJORITY = "majority"  # classification without inputs: the train rows' class frequencies
MEAN = "mean"  # regression without inputs: the train rows' mean target
PRIOR_LABELS = {MAJORITY: "majority class (train frequencies)", MEAN: "train mean"}
