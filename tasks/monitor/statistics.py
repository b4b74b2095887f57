"""Two-sample statistics on plain arrays: the tests come from scipy.stats, the effect sizes are here.

Every function compares a reference sample with a batch sample and returns a `Comparison`:
a test (statistic and p-value: is the difference more than sampling noise?) and an effect
size (is it large enough to matter?). Judging both against `monitor.threshold` is
checks.py's job, so these functions stay free of configuration.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

PSI_FLOOR = 1e-4  # share given to an empty bin, so ln(batch / reference) stays finite
NUMERIC_BINS = 10  # reference deciles
MAX_CATEGORIES = 20  # most frequent reference categories kept as their own bins
MIN_CATEGORY_ROWS = 5  # a rarer category joins the "<other>" bin, with every unseen one
MIN_ROWS = 5  # fewer values on either side: the check is reported, never flagged
OTHER = "<other>"


@dataclass(frozen=True)
class Comparison:
    """One test and one effect size for one column (or block) on both sides."""

    test: str  # ks | chi2 | fisher | binomial | domain-classifier | none
    statistic: float
    p_value: float
    effect: str  # psi | auc | missing | unseen: the name of its threshold in monitor.threshold
    score: float  # the effect size
    detail: str  # what a person reads first, e.g. "missing 5.0% -> 21.0%"
    reference_rows: int
    batch_rows: int

    @classmethod
    def too_few(cls, effect: str, reference_rows: int, batch_rows: int, baseline: float = 0.0) -> Comparison:
        """No test with under MIN_ROWS values on a side: p = 1, so it can never be flagged."""
        detail = f"too few values to compare ({reference_rows} reference, {batch_rows} batch)"
        return cls("none", 0.0, 1.0, effect, baseline, detail, reference_rows, batch_rows)


def psi(reference_counts: np.ndarray, batch_counts: np.ndarray) -> float:
    """Population stability index: sum over bins of (b - r) * ln(b / r), with shares floored.

    Symmetric, zero for identical shares, and with conventional readings (under 0.1 stable,
    0.1-0.2 a slight shift, over 0.2 a significant one) that make a threshold easy to choose.
    """
    r = np.maximum(reference_counts / max(reference_counts.sum(), 1), PSI_FLOOR)
    b = np.maximum(batch_counts / max(batch_counts.sum(), 1), PSI_FLOOR)
    return float(np.sum((b - r) * np.log(b / r)))


def numeric_drift(reference: np.ndarray, batch: np.ndarray) -> Comparison:
    """Kolmogorov-Smirnov test and the PSI over the reference's deciles (missing values left out).

    Decile bins put a tenth of the reference in each bin, so the PSI weighs every part of
    the distribution alike and needs no scale; a value outside the reference's range falls
    in the first or last bin. Repeated values (a rating, a count) merge bins rather than
    leave empty ones.
    """
    reference, batch = _finite(reference), _finite(batch)
    if min(len(reference), len(batch)) < MIN_ROWS:
        return Comparison.too_few("psi", len(reference), len(batch))
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1]))
    bins = len(edges) + 1
    ref_counts = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=bins)
    batch_counts = np.bincount(np.searchsorted(edges, batch, side="right"), minlength=bins)
    ks = stats.ks_2samp(reference, batch)
    detail = f"median {np.median(reference):.4g} -> {np.median(batch):.4g}"
    return Comparison(
        "ks", float(ks.statistic), float(ks.pvalue), "psi", psi(ref_counts, batch_counts), detail,
        len(reference), len(batch),
    )  # fmt: skip


def categorical_drift(reference: Sequence[str], batch: Sequence[str]) -> Comparison:
    """Chi-squared test of homogeneity and the PSI over the reference's frequent categories.

    Bins are the reference's categories with at least MIN_CATEGORY_ROWS rows (at most
    MAX_CATEGORIES of them) plus one "<other>" bin for the long tail and for anything the
    reference never had. A long-tailed column (brands, places) then compares like with
    like: a fresh sample has new rare values in about the share the reference had rare ones.
    A new value that becomes common still shows, as a growing "<other>" bin, and in
    `unseen_drift`.
    """
    if min(len(reference), len(batch)) < MIN_ROWS:
        return Comparison.too_few("psi", len(reference), len(batch))
    frequent = [
        value for value, count in Counter(reference).most_common(MAX_CATEGORIES) if count >= MIN_CATEGORY_ROWS
    ]
    labels = [*frequent, OTHER]
    index = {value: i for i, value in enumerate(frequent)}
    ref_counts = np.bincount([index.get(v, len(frequent)) for v in reference], minlength=len(labels))
    batch_counts = np.bincount([index.get(v, len(frequent)) for v in batch], minlength=len(labels))
    table = np.vstack([ref_counts, batch_counts])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        statistic, p_value = 0.0, 1.0
    else:
        result = stats.chi2_contingency(table, correction=False)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    return Comparison(
        "chi2", statistic, p_value, "psi", psi(ref_counts, batch_counts),
        _largest_change(labels, ref_counts, batch_counts), len(reference), len(batch),
    )  # fmt: skip


def missing_drift(reference_present: np.ndarray, batch_present: np.ndarray) -> Comparison:
    """Fisher's exact test on the 2x2 table of missing/present, and the change in missing share.

    Exact, so it holds for a batch of twenty rows as well as for a large one.
    """
    ref_missing, batch_missing = int((~reference_present).sum()), int((~batch_present).sum())
    n_ref, n_batch = len(reference_present), len(batch_present)
    if min(n_ref, n_batch) < MIN_ROWS:
        return Comparison.too_few("missing", n_ref, n_batch)
    table = [[ref_missing, n_ref - ref_missing], [batch_missing, n_batch - batch_missing]]
    result = stats.fisher_exact(table)
    ref_share, batch_share = ref_missing / n_ref, batch_missing / n_batch
    return Comparison(
        "fisher", float(result.statistic), float(result.pvalue), "missing", abs(batch_share - ref_share),
        f"missing {ref_share:.1%} -> {batch_share:.1%}", n_ref, n_batch,
    )  # fmt: skip


def unseen_drift(reference: Sequence[str], batch: Sequence[str]) -> Comparison:
    """Share of batch values the reference never had, against the share its long tail predicts.

    Even with no drift a fresh sample holds values a finite reference missed; Good-Turing's
    estimate of that share is the reference's share of values seen exactly once. The effect
    is the excess over it, and a one-sided binomial test asks whether the batch has more
    unseen values than that.
    """
    if min(len(reference), len(batch)) < MIN_ROWS:
        return Comparison.too_few("unseen", len(reference), len(batch))
    counts = Counter(reference)
    singletons = sum(1 for count in counts.values() if count == 1)
    expected = min((singletons + 1) / (len(reference) + 1), 1.0)  # +1: never exactly zero
    unseen = sum(1 for value in batch if value not in counts)
    observed = unseen / len(batch)
    test = stats.binomtest(unseen, len(batch), expected, alternative="greater")
    detail = f"{unseen} rows ({observed:.1%}) with unseen values; {expected:.1%} expected"
    return Comparison(
        "binomial", float(unseen), float(test.pvalue), "unseen", max(observed - expected, 0.0), detail,
        len(reference), len(batch),
    )  # fmt: skip


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def _largest_change(labels: list[str], ref_counts: np.ndarray, batch_counts: np.ndarray) -> str:
    """The bin whose share moved most, e.g. "kitchen 24.0% -> 0.0%"."""
    ref_share = ref_counts / max(ref_counts.sum(), 1)
    batch_share = batch_counts / max(batch_counts.sum(), 1)
    i = int(np.argmax(np.abs(batch_share - ref_share)))
    if math.isclose(ref_share[i], batch_share[i]):
        return "same shares"
    return f"{labels[i]} {ref_share[i]:.1%} -> {batch_share[i]:.1%}"
