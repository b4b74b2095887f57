"""Champion against challenger on the same rows: the promoted model re-scored on today's splits.

A metric stored by an earlier run was measured on that run's test rows; comparing it with
today's number compares two different samples. Here both models predict the rows of the
candidate's own val and test splits (through batch prediction's path and the row-level feature
cache, so known rows cost no encoding), and the difference gets a paired bootstrap interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.device import pick_device
from tasks.evaluate.evaluation import FUSED, bootstrap_intervals, primary_score
from tasks.features.cache import FeatureCache
from tasks.schema import SPLIT, TARGET
from tasks.serve.predict import Predictor, file_roots, load_predictor
from tasks.train.assemble import encode_target

CHAMPION = "champion"


@dataclass(frozen=True)
class SameRows:
    """Both models' primary metric on the same rows, and the paired interval of their difference."""

    metric: str
    rows: int
    candidate: float
    champion: float
    interval: dict[str, float]  # candidate minus champion: {"low", "high"}
    val: dict[str, float]  # {"candidate", "champion"} on the candidate's val rows

    def to_json(self) -> dict:
        return dict(self.__dict__)


def compare_on_same_rows(
    champion_dir: Path, candidate_dir: Path, aligned: pd.DataFrame, metric: str, cache_dir: str | Path
) -> SameRows:
    """Score both bundles on `aligned`'s test rows (decision) and val rows (shown).

    Raises DataError when the champion cannot read today's rows (a class it never saw, a
    column it needs that is gone): then the rows cannot be compared, and the caller says so.
    """
    cache = FeatureCache(cache_dir)
    champion, candidate = load_predictor(champion_dir, cache), load_predictor(candidate_dir, cache)
    scores: dict[str, dict[str, np.ndarray]] = {}
    truth: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        rows = aligned[aligned[SPLIT] == split].reset_index(drop=True)
        truth[split] = encode_target(rows[TARGET], champion.meta.task, champion.meta.classes or None)[0]
        scores[split] = {
            name: _predict(p, rows, cache) for name, p in ((FUSED, candidate), (CHAMPION, champion))
        }
    task = champion.meta.task
    test = scores["test"]
    interval = bootstrap_intervals(task, truth["test"], test)[f"{FUSED}_minus_{CHAMPION}"]
    return SameRows(
        metric=metric,
        rows=len(truth["test"]),
        candidate=primary_score(task, truth["test"], test[FUSED]),
        champion=primary_score(task, truth["test"], test[CHAMPION]),
        interval=interval,
        val={
            "candidate": primary_score(task, truth["val"], scores["val"][FUSED]),
            "champion": primary_score(task, truth["val"], scores["val"][CHAMPION]),
        },
    )


def _predict(predictor: Predictor, rows: pd.DataFrame, cache: FeatureCache) -> np.ndarray:
    """The bundle's served predictions (its ensemble) for aligned rows, as arrays."""
    return predictor.predictions(rows, file_roots(predictor.data), cache, pick_device("auto"))[1]
