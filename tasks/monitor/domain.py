"""Embedding drift as a classifier two-sample test: can a model tell batch vectors from reference ones?

A text, image or audio column has no bins to compare, but its embeddings do have a
distribution. If a linear classifier, scored on rows it was not fitted on, separates
"batch" from "reference" better than chance, the two differ; its ROC AUC says how much
(0.5: indistinguishable, 1.0: disjoint), a scale that does not depend on the encoder.

The classifier is a ridge (least-squares) linear classifier on the top principal
components of the pooled, centred vectors, scored out-of-fold. Both choices serve the test:

- The p-value is calibrated by permuting the reference/batch labels: the AUC's mean and
  spread under "no difference" come from the same folds and classifier, so the extra
  variance of pooled out-of-fold scores is counted, and its tail is normal (the AUC is a
  Mann-Whitney U statistic). The plain Mann-Whitney p-value of the pooled out-of-fold
  scores is not valid: scores from different folds' models are not one sample. Measured
  while writing this, on 80 draws of 140 + 200 rows from one distribution (the demo's text,
  image and audio embeddings, logistic regression), it gave p < 0.01 in 7 where about 1
  was expected. The permutation count alone would floor p at 1 / (permutations + 1), too
  coarse once checks.holm multiplies it by the number of checks in a run.
- The projection onto the components does not look at the labels, so it is the same
  for every permutation, and a ridge fit is linear in the labels: one solve per fold scores
  every permutation at once, as a matrix product. Five hundred permutations cost about
  as much as one scikit-learn fit.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata

from tasks.monitor.statistics import MIN_ROWS, Comparison

COMPONENTS = 32  # principal components the classifier sees
FOLDS = 5
RIDGE = 1.0  # penalty per training row on whitened components
PERMUTATIONS = 499  # label permutations that estimate the AUC's null mean and spread
_PERMUTATION_BLOCK = 250  # permutations scored per matrix product (bounds memory)


def domain_classifier_drift(reference: np.ndarray, batch: np.ndarray, seed: int = 0) -> Comparison:
    """ROC AUC of the out-of-fold domain classifier and its one-sided p-value; (rows, dim) each."""
    n_ref, n_batch = len(reference), len(batch)
    if min(n_ref, n_batch) < max(MIN_ROWS, FOLDS):
        return Comparison.too_few("auc", n_ref, n_batch, baseline=0.5)
    rng = np.random.default_rng(seed)
    z = _components(np.vstack([reference, batch]).astype(np.float64))  # (n, k)
    labels = np.r_[np.zeros(n_ref), np.ones(n_batch)]
    folds = rng.permutation(len(labels)) % FOLDS
    observed = float(_aucs(z, labels[:, None], folds)[0])
    null = np.concatenate(
        [
            _aucs(z, np.column_stack([rng.permutation(labels) for _ in range(block)]), folds)
            for block in _blocks(PERMUTATIONS, _PERMUTATION_BLOCK)
        ]
    )
    spread = float(null.std(ddof=1))
    if spread > 0:
        p_value = float(norm.sf((observed - null.mean()) / spread))
    else:  # every permutation scored alike (e.g. identical vectors): count instead
        p_value = float((np.sum(null >= observed) + 1) / (len(null) + 1))
    detail = f"domain classifier AUC {observed:.3f} (null {null.mean():.3f} ± {spread:.3f})"
    return Comparison("domain-classifier", observed, p_value, "auc", observed, detail, n_ref, n_batch)


def _blocks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def _components(x: np.ndarray) -> np.ndarray:
    """Whitened top principal components of the centred rows: unit variance per component."""
    x = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    keep = int(min(COMPONENTS, np.sum(s > s[0] * 1e-6))) if len(s) and s[0] > 0 else 0
    if keep == 0:  # every vector identical: nothing to tell apart
        return np.zeros((len(x), 1))
    return u[:, :keep] * math.sqrt(len(x))


def _aucs(z: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold ROC AUC for each column of `labels` (n, p), all from one solve per fold."""
    scores = np.empty(labels.shape)
    k = z.shape[1]
    for fold in range(FOLDS):
        train, held = folds != fold, folds == fold
        z_train = z[train] - z[train].mean(axis=0)
        solve = np.linalg.solve(z_train.T @ z_train + RIDGE * len(z_train) * np.eye(k), z_train.T)  # (k, n)
        y_train = labels[train] - labels[train].mean(axis=0)
        scores[held] = (z[held] - z[train].mean(axis=0)) @ (solve @ y_train)
    ranks = rankdata(scores, axis=0)
    positives = labels.sum(axis=0)
    negatives = len(labels) - positives
    return ((ranks * labels).sum(axis=0) - positives * (positives + 1) / 2) / (positives * negatives)
