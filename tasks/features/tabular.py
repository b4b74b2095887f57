"""Tabular preprocessing: fit on train rows only, apply the same state everywhere.

The fitted state is plain JSON so the model bundle can carry it to batch prediction, where
unseen categories fall into an explicit 'unknown' slot instead of failing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.data.outliers import huge_masks

MAX_CATEGORIES = 50  # one-hot width per column; rarer values share the 'unknown' slot
_CLIP = 10.0  # standardised values beyond this are clipped so one huge value can't dominate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TabularState:
    """Vocabularies and scaling learned from the training split."""

    categorical: dict[str, list[str]]
    numeric: dict[str, tuple[float, float]]

    @property
    def width(self) -> int:
        # per categorical column: missing + unknown + vocab; per numeric: value + missing flag
        return sum(len(v) + 2 for v in self.categorical.values()) + 2 * len(self.numeric)

    def feature_names(self) -> list[str]:
        names: list[str] = []
        for column, vocab in self.categorical.items():
            names += [f"{column}=<missing>", f"{column}=<unknown>"] + [f"{column}={v}" for v in vocab]
        for column in self.numeric:
            names += [column, f"{column}:missing"]
        return names

    def to_json(self) -> dict:
        # Lists, not dicts: bundles are written with sorted keys, and the block's layout
        # follows column order, so a dict would come back alphabetised and scramble features.
        return {
            "categorical": [{"column": c, "vocabulary": list(v)} for c, v in self.categorical.items()],
            "numeric": [{"column": c, "mean": m, "std": s} for c, (m, s) in self.numeric.items()],
        }

    @classmethod
    def from_json(cls, data: dict) -> TabularState:
        categorical, numeric = data["categorical"], data["numeric"]
        if isinstance(categorical, dict):  # written before column order was stored
            categorical = [{"column": c, "vocabulary": v} for c, v in categorical.items()]
            numeric = [{"column": c, "mean": v[0], "std": v[1]} for c, v in numeric.items()]
        return cls(
            categorical={e["column"]: [str(x) for x in e["vocabulary"]] for e in categorical},
            numeric={e["column"]: (float(e["mean"]), float(e["std"])) for e in numeric},
        )


def fit_tabular(train: pd.DataFrame, categorical: list[str], numeric: list[str]) -> TabularState:
    """Learn vocabularies (most frequent first, ties by value) and mean/std from train rows."""
    vocab: dict[str, list[str]] = {}
    for column in categorical:
        counts = train[column].dropna().astype(str).value_counts()
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        vocab[column] = [value for value, _ in ranked[:MAX_CATEGORIES]]
    block = _numeric_block(train, numeric)  # (rows, numeric columns), NaN where not finite
    # One 1e308 would make the mean and std so large that every other value scales to ~0.
    kept = ~np.isnan(block) & ~huge_masks(block)
    scaling = {column: _mean_std(pd.Series(block[kept[:, j], j])) for j, column in enumerate(numeric)}
    return TabularState(vocab, scaling)


def _numeric_block(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """The columns as one float64 (rows, columns) array, NaN for missing and infinite values.

    One array for all of them: 10,000 columns converted one by one cost seconds in pandas calls.
    """
    block = frame[list(columns)].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    block[np.isinf(block)] = np.nan
    return block


def _mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and population std, always finite (std > 0) so the state is valid JSON."""
    if not len(values):
        return 0.0, 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(values.mean())
        std = float(values.std(ddof=0)) if len(values) > 1 else 1.0
        if not (np.isfinite(mean) and np.isfinite(std)):
            # sums of huge values (~1e308) overflow to inf; work in units of the largest value
            scale = float(values.abs().max())
            unit = values / scale
            mean = float(unit.mean()) * scale
            std = float(unit.std(ddof=0)) * scale if len(values) > 1 else 1.0
    return mean, (std if np.isfinite(std) and std > 0 else 1.0)


def transform_tabular(frame: pd.DataFrame, state: TabularState) -> np.ndarray:
    """(N, state.width) float32 matrix: one-hot categoricals, standardised numerics + flags."""
    blocks: list[np.ndarray] = []
    for column, vocab in state.categorical.items():
        slots = {value: i + 2 for i, value in enumerate(vocab)}
        values = frame[column]
        codes = np.array([0 if pd.isna(v) else slots.get(str(v), 1) for v in values], dtype=np.int64)
        unknown = int((codes == 1).sum())
        if unknown:
            log.info("%s: %d values not in the training vocabulary -> <unknown>", column, unknown)
        one_hot = np.zeros((len(frame), len(vocab) + 2), dtype=np.float32)
        one_hot[np.arange(len(frame)), codes] = 1.0
        blocks.append(one_hot)
    if state.numeric:
        values = _numeric_block(frame, list(state.numeric))  # (rows, numeric columns)
        mean, std = (np.array(v, dtype=np.float64) for v in zip(*state.numeric.values(), strict=True))
        missing = np.isnan(values)
        with np.errstate(over="ignore", invalid="ignore"):  # huge values overflow to +-inf, then clip
            scaled = np.clip(np.where(missing, 0.0, (values - mean) / std), -_CLIP, _CLIP)
        pairs = np.empty((len(frame), 2 * len(state.numeric)), dtype=np.float32)  # value, missing flag
        pairs[:, 0::2], pairs[:, 1::2] = scaled, missing
        blocks.append(pairs)
    if not blocks:
        return np.zeros((len(frame), 0), dtype=np.float32)
    return np.concatenate(blocks, axis=1)
