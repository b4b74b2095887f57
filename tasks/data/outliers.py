"""Huge values: finite numbers so far from their column's others that they are typos or sentinels.

Align counts them per column (the report's `huge_values`) and tabular preprocessing leaves
them out of the fitted scaling; both ask this one definition, which lives with the data so
that align need not import the feature code.
"""

from __future__ import annotations

import warnings

import numpy as np

# A value this many robust spreads (median absolute deviations) from the median is a typo or
# a sentinel like 1e308, not a measurement; heavy-tailed real columns stay far below it.
HUGE_SPREADS = 1e6


def huge_masks(block: np.ndarray) -> np.ndarray:
    """True for finite values more than HUGE_SPREADS robust spreads from their column's median.

    They are left out of the fitted mean and std and, like any far-out value, clipped at
    transform time. The spread is the median absolute deviation, or for mostly-constant
    columns the 99th percentile of deviations, or failing that max(|median|, 1). Every column
    of the (rows, columns) block at once: one call per column cost 1 ms in overhead.
    """
    block = np.asarray(block, dtype=np.float64)
    finite = np.isfinite(block)
    mask = np.zeros(block.shape, dtype=bool)
    enough = finite.sum(axis=0) >= 2  # fewer finite values have no spread
    if not enough.any():
        return mask
    values = np.where(finite, block, np.nan)[:, enough]  # (rows, usable columns), NaN where not finite
    with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are left out below
        median = np.nanmedian(values, axis=0)
        deviation = np.abs(values - median)  # may overflow to inf: then surely huge
        spread = np.nanmedian(deviation, axis=0)
        flat = ~(np.isfinite(spread) & (spread > 0))
        if flat.any():
            spread[flat] = np.nanquantile(deviation[:, flat], 0.99, axis=0)
        flat = ~(np.isfinite(spread) & (spread > 0))
        spread[flat] = np.maximum(np.abs(median[flat]), 1.0)
        mask[:, enough] = np.nan_to_num(deviation, nan=0.0, posinf=np.inf) > HUGE_SPREADS * spread
    return mask & finite
