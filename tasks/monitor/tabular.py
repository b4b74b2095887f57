"""The declared columns of two aligned-like tables, checked column by column.

Both tables have the layout align writes (and batch prediction's `read_new_rows` builds):
numeric columns as float64, every other role as strings, and a `present__<column>` mask
that is False where a row has no usable value (an empty cell, an unreadable image). The
masks make the missing-share check the same for every role.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.config import DataConfig, DriftThresholds
from tasks.monitor.checks import Check, judge
from tasks.monitor.statistics import categorical_drift, missing_drift, numeric_drift, unseen_drift
from tasks.schema import PRESENT


def tabular_checks(
    reference: pd.DataFrame, batch: pd.DataFrame, data: DataConfig, thresholds: DriftThresholds
) -> list[Check]:
    """Distribution (and, for categories, unseen values) of each tabular column; missing share of all."""
    checks: list[Check] = []
    for column in data.columns.numeric:
        comparison = numeric_drift(_present(reference, column), _present(batch, column))
        checks.append(judge(column, "numeric", "distribution", comparison, thresholds))
    for column in data.columns.categorical:
        ref_values = [str(v) for v in _present(reference, column)]
        batch_values = [str(v) for v in _present(batch, column)]
        for aspect, compare in (("distribution", categorical_drift), ("unseen", unseen_drift)):
            checks.append(judge(column, "categorical", aspect, compare(ref_values, batch_values), thresholds))
    for column in data.columns.all():
        comparison = missing_drift(_mask(reference, column), _mask(batch, column))
        checks.append(judge(column, data.columns.role_of(column), "missing", comparison, thresholds))
    return checks


def _mask(table: pd.DataFrame, column: str) -> np.ndarray:
    return table[PRESENT + column].to_numpy(dtype=bool)


def _present(table: pd.DataFrame, column: str) -> np.ndarray:
    """The column's usable values (numeric ones may still hold NaN: numeric_drift drops those)."""
    return table.loc[_mask(table, column), column].to_numpy()
