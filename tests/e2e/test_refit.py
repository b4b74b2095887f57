"""Refit in the reproduced demo project (`train.refit: true`, the default): the members the
ensemble kept learned the val rows after the selection, and every later reader knows it.

The session's `repo` (tests/e2e/conftest.py) is read, never changed: nothing is trained here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.monitor.rows import model_reference
from tasks.schema import SPLIT
from tasks.scores.model_names import FUSED, FUSED_HEAD
from tasks.train.boosted import read_boosted
from tasks.train.bundle import verify_bundle
from tasks.train.lineage import read_lineage
from tasks.train.members import member_dir

pytestmark = pytest.mark.slow


def test_the_kept_members_were_refit_on_train_and_val(repo: tuple[Path, dict[str, str]]) -> None:
    root, _ = repo
    ensemble = json.loads((root / "models" / "ensemble.json").read_text())
    aligned = pd.read_parquet(root / "data" / "aligned" / "aligned.parquet")
    learned = int(aligned[SPLIT].isin(["train", "val"]).sum())
    assert ensemble["refit"] == {"rows": learned, "members": sorted(ensemble["members"])}
    report = (root / "reports" / "report.md").read_text()
    assert f"were fitted again on the {learned:,} train and val rows" in report
    if "boosted" in ensemble["members"]:
        boosted = read_boosted(member_dir(root / "models", "boosted"))
        assert boosted.info["refit"] == {"rows": learned}
        assert [b.current_iteration() for b in boosted.boosters] == [
            bag["best_round"] for bag in boosted.info["bags"]
        ]


def test_evaluate_reports_the_val_scores_that_chose_not_the_refit_models_own(
    repo: tuple[Path, dict[str, str]],
) -> None:
    root, _ = repo
    ensemble = json.loads((root / "models" / "ensemble.json").read_text())
    metrics = json.loads((root / "reports" / "evaluation.json").read_text())
    assert metrics["val"][FUSED] == ensemble["val"]
    tried = {t["name"]: t["val"] for t in ensemble["tried"] if "val" in t}
    assert metrics["val"][FUSED_HEAD] == tried[FUSED]  # in metrics, FUSED names the final model
    for name in (set(ensemble["refit"]["members"]) & set(metrics["val"])) - {FUSED}:
        assert metrics["val"][name] == tried[name], name


def test_the_monitor_takes_the_refit_models_val_rows_as_learned(repo: tuple[Path, dict[str, str]]) -> None:
    root, _ = repo
    bundle = root / "models"
    record = verify_bundle(bundle).lineage
    assert record["fitted"] == ["train", "val"]
    aligned = pd.read_parquet(root / "data" / "aligned" / "aligned.parquet")
    found = model_reference(aligned, read_lineage(bundle, record), "models", "aligned.parquet")
    assert set(found.train[SPLIT]) == {"train", "val"} and set(found.held_out[SPLIT]) == {"test"}
