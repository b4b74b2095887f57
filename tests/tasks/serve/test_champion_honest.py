"""Champion against challenger, honestly (issue 24, findings 3 and 4), on real tiny bundles.

Each bundle is a real one (safetensors head + bundle.json with its tabular state, classes and
params), loaded and predicted through batch prediction's path, as the retrain flow does. The
heads are untrained (seeded): the truth is drawn from a model's own served predictions, so
its real AUC is known without training anything.
"""

from __future__ import annotations

import html
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from flows.deploy import _markdown, promote_if_not_worse
from modelzoo.registry import lookup
from tasks.config import ScheduleConfig, SplitConfig
from tasks.data.align import hash_split
from tasks.device import pick_device
from tasks.features.cache import FeatureCache
from tasks.paths import Layout
from tasks.schema import ID, PRESENT, SPLIT, TARGET
from tasks.serve.champion import NotComparable, compare_on_same_rows, held_out_by_both
from tasks.serve.predict import load_predictor
from tasks.serve.promotion import HISTORY, decide, promote
from tasks.train.bundle import BundleMeta, load_bundle, write_bundle
from tasks.train.lineage import write_lineage

TRAIN, VAL = 0.7, 0.15


def _bundle(
    directory: Path,
    classes: tuple[str, ...],
    split: dict,
    task: str = "binary",
    seed: int = 0,
    trained_on: pd.DataFrame | None = None,
    metric: str | None = None,
) -> Path:
    """A real bundle over one numeric column `x`, its split settings recorded in its params.

    `trained_on`: the aligned rows it was trained on, kept as its lineage as train writes it;
    without it, a bundle from before lineage was kept.
    """
    head = lookup("head", "concat")
    torch.manual_seed(seed)
    out_dim = 1 if task == "binary" else len(classes)
    model = head({"tabular": 2}, out_dim, head.Config(hidden=8, dropout=0.0))
    data = {
        "sources": [{"path": "rows.csv"}], "id": "item_id", "target": "label", "task": task,
        "positive_class": classes[1] if task == "binary" else None,
        "columns": {"numeric": ["x"]}, "split": {"method": "hash", **split},
    }  # fmt: skip
    meta = BundleMeta(
        task=task, fusion={"head": "concat", "hidden": 8, "dropout": 0.0}, in_dims={"tabular": 2},
        out_dim=out_dim, classes=classes, target_scaling=None, encoders={},
        tabular={"categorical": [], "numeric": [{"column": "x", "mean": 0.0, "std": 1.0}]},
        best_epoch=1, params={"data": data}, metric=metric,
    )  # fmt: skip
    if trained_on is not None:
        directory.mkdir(parents=True)
        lineage = write_lineage(directory, trained_on, SplitConfig.model_validate(data["split"]))
        meta = replace(meta, lineage=lineage)
    write_bundle(directory, model, meta)
    return directory


def _aligned(n: int, seed: int) -> pd.DataFrame:
    """Today's aligned rows, split by today's `data.split.seed`; the target is filled in later."""
    ids = np.array([f"item{i:05d}" for i in range(n)], dtype=object)
    x = np.random.default_rng(1).normal(size=n)
    return pd.DataFrame(
        {
            ID: pd.array(ids, dtype="string"),
            SPLIT: hash_split(ids, seed, TRAIN, VAL),
            TARGET: "",
            "x": x,
            PRESENT + "x": True,
        }
    )


def _served(bundle: Path, aligned: pd.DataFrame, cache: Path) -> pd.DataFrame:
    """The bundle's served predictions (prob_<class> columns), as `fuseline predict` writes them."""
    predictor = load_predictor(bundle, FeatureCache(cache))
    return predictor.predict(aligned, {}, FeatureCache(cache), pick_device("cpu"))


def _labels_following(score: np.ndarray, positive: str, negative: str) -> np.ndarray:
    """Labels that a score ranks well but not perfectly (AUC near 0.8): a good, honest model."""
    noisy = score + np.random.default_rng(2).normal(scale=score.std(), size=len(score))
    return np.where(noisy > np.median(noisy), positive, negative)


# --- finding 3: each model through its own classes -----------------------------------------------


def test_candidate_with_another_positive_class_is_scored_for_its_own(tmp_path: Path) -> None:
    """data.positive_class 'yes' -> 'no': the candidate's real AUC, never 1 - AUC."""
    champion = _bundle(tmp_path / "champion", ("no", "yes"), {"seed": 42}, seed=1)
    candidate = _bundle(tmp_path / "candidate", ("yes", "no"), {"seed": 42}, seed=2)
    aligned = _aligned(600, seed=42)
    cache = tmp_path / "cache"
    prob_no = _served(candidate, aligned, cache)["prob_no"].to_numpy()
    aligned[TARGET] = _labels_following(prob_no, "no", "yes")
    test = (aligned[SPLIT] == "test").to_numpy()
    real = roc_auc_score(aligned[TARGET][test] == "no", prob_no[test])
    assert real > 0.7  # a good model: the old code scored it 1 - real

    same = compare_on_same_rows(champion, candidate, aligned, "auc", cache)

    assert same.candidate == pytest.approx(real, abs=1e-6)
    prob_yes = _served(champion, aligned, cache)["prob_yes"].to_numpy()
    champion_auc = roc_auc_score(aligned[TARGET][test] == "yes", prob_yes[test])  # its own AUC
    assert same.champion == pytest.approx(champion_auc, abs=1e-6)
    assert any("data.positive_class 'yes' -> 'no'" in note for note in same.notes)


def test_both_models_are_scored_by_todays_metric_whatever_the_champion_was_chosen_on(tmp_path: Path) -> None:
    """evaluate.metric is log_loss now; the champion was selected on AUC: both get today's log loss."""
    champion = _bundle(tmp_path / "champion", ("no", "yes"), {"seed": 42}, seed=1, metric="auc")
    candidate = _bundle(tmp_path / "candidate", ("no", "yes"), {"seed": 42}, seed=2, metric="log_loss")
    aligned = _aligned(600, seed=42)
    cache = tmp_path / "cache"
    served = {
        name: _served(b, aligned, cache)["prob_yes"].to_numpy()
        for name, b in (("champion", champion), ("candidate", candidate))
    }
    aligned[TARGET] = _labels_following(served["candidate"], "yes", "no")
    test = (aligned[SPLIT] == "test").to_numpy()
    truth = aligned[TARGET][test] == "yes"

    same = compare_on_same_rows(champion, candidate, aligned, "log_loss", cache)

    assert same.metric == "log_loss"
    assert same.candidate == pytest.approx(log_loss(truth, served["candidate"][test]), rel=1e-5)
    assert same.champion == pytest.approx(log_loss(truth, served["champion"][test]), rel=1e-5)


def test_a_new_class_is_compared_on_the_classes_both_know(tmp_path: Path) -> None:
    """Multiclass a, b -> a, b, c: rows of c are left out, each model reads its own columns."""
    champion = _bundle(tmp_path / "champion", ("a", "b"), {"seed": 42}, "multiclass", seed=1)
    candidate = _bundle(tmp_path / "candidate", ("a", "b", "c"), {"seed": 42}, "multiclass", seed=2)
    aligned = _aligned(600, seed=42)
    aligned[TARGET] = np.array(["a", "b", "c"])[np.arange(len(aligned)) % 3]
    cache = tmp_path / "cache"

    same = compare_on_same_rows(champion, candidate, aligned, "accuracy", cache)

    shared = ((aligned[SPLIT] == "test") & (aligned[TARGET] != "c")).to_numpy()
    assert same.rows == int(shared.sum())
    served = _served(candidate, aligned, cache)[shared]
    picked = np.where(served["prob_a"] >= served["prob_b"], "a", "b")  # its best of the shared classes
    assert same.candidate == pytest.approx(np.mean(picked == aligned[TARGET][shared]))
    assert any("added ['c']" in note for note in same.notes)


# --- finding 4: a changed split must not leak the champion's train rows ---------------------------


def test_changed_split_seed_compares_only_rows_the_champion_never_saw(tmp_path: Path) -> None:
    """data.split.seed 42 -> 7 on 2,000 ids: most of today's test rows were the champion's train rows."""
    champion = _bundle(tmp_path / "champion", ("no", "yes"), {"seed": 42}, seed=1)
    candidate = _bundle(tmp_path / "candidate", ("no", "yes"), {"seed": 7}, seed=2)
    aligned = _aligned(2000, seed=7)
    cache = tmp_path / "cache"
    prob_yes = _served(champion, aligned, cache)["prob_yes"].to_numpy()
    aligned[TARGET] = _labels_following(prob_yes, "yes", "no")
    ids = aligned[ID].to_numpy(dtype=object)
    champion_seen = hash_split(ids, 42, TRAIN, VAL) != "test"
    today_test = (aligned[SPLIT] == "test").to_numpy()

    held = held_out_by_both(load_bundle(champion)[1], champion, SplitConfig(method="hash", seed=7), aligned)
    same = compare_on_same_rows(champion, candidate, aligned, "auc", cache)

    assert not (held.test & champion_seen).any()  # no leaked row
    assert same.left_out == int((today_test & champion_seen).sum()) > 0
    assert same.rows == int(held.test.sum()) == int((today_test & ~champion_seen).sum())
    rows = held.test
    assert same.champion == pytest.approx(roc_auc_score(aligned[TARGET][rows] == "yes", prob_yes[rows]))
    assert any("data.split.seed 42 -> 7" in note for note in same.notes)


def test_too_few_rows_held_out_by_both_is_refused_naming_the_setting(tmp_path: Path) -> None:
    champion = _bundle(tmp_path / "champion", ("no", "yes"), {"seed": 42})
    candidate = _bundle(tmp_path / "candidate", ("no", "yes"), {"seed": 7})
    aligned = _aligned(200, seed=7)
    aligned[TARGET] = np.where(np.arange(len(aligned)) % 2, "yes", "no")
    with pytest.raises(NotComparable, match=r"data\.split\.seed 42 -> 7.*fewer than the 30") as refused:
        compare_on_same_rows(champion, candidate, aligned, "auc", tmp_path / "cache")
    assert "\n" not in str(refused.value)


def test_a_group_split_that_cannot_be_recomputed_is_refused(tmp_path: Path) -> None:
    """Group values are not in aligned.parquet: without a lineage the champion's train rows are unknown."""
    champion = _bundle(tmp_path / "champion", ("no", "yes"), {"seed": 42, "group": "product"})
    today = SplitConfig(method="hash", seed=42)
    with pytest.raises(NotComparable, match=r"data\.split\.group 'product' -> None"):
        held_out_by_both(load_bundle(champion)[1], champion, today, _aligned(50, 42))


def test_the_champions_lineage_tells_its_train_rows_whatever_the_split_was(tmp_path: Path) -> None:
    """data.split.group 'product' -> none: the rows it trained on come from its lineage, by id."""
    aligned = _aligned(2000, seed=42)
    aligned[TARGET] = np.where(aligned["x"] > 0, "yes", "no")
    groups = np.array([f"group:p{i // 4}" for i in range(len(aligned))], dtype=object)
    trained_on = aligned.assign(**{SPLIT: hash_split(groups, 42, TRAIN, VAL)})
    champion = _bundle(
        tmp_path / "champion", ("no", "yes"), {"seed": 42, "group": "product"}, trained_on=trained_on
    )
    candidate = _bundle(tmp_path / "candidate", ("no", "yes"), {"seed": 42}, seed=2)

    same = compare_on_same_rows(champion, candidate, aligned, "auc", tmp_path / "cache")

    held_out = ((aligned[SPLIT] == "test") & (trained_on[SPLIT] == "test")).to_numpy()
    assert same.rows == int(held_out.sum())
    assert same.left_out == int(((aligned[SPLIT] == "test") & (trained_on[SPLIT] != "test")).sum()) > 0
    assert any("data.split.group 'product' -> None" in note for note in same.notes)


def test_retrain_keeps_the_current_model_and_says_why_when_no_fair_comparison_exists(
    tmp_path: Path,
) -> None:
    """The flow's decision: kept, with the changed setting named in history.json and the artifact."""
    registry = tmp_path / "registry"
    promote(registry, _bundle(tmp_path / "old", ("no", "yes"), {"seed": 42}), {}, decide("auc", 0.8, None, 0))
    layout = Layout(tmp_path / "run")
    _bundle(layout.models, ("no", "yes"), {"seed": 7}, seed=3)
    layout.evaluation.parent.mkdir(parents=True)
    layout.evaluation.write_text(json.dumps({"primary_metric": "auc", "test": {"auc": 0.9}}))
    aligned = _aligned(200, seed=7)
    aligned[TARGET] = np.where(np.arange(len(aligned)) % 2, "yes", "no")
    layout.aligned.parent.mkdir(parents=True)
    aligned.to_parquet(layout.aligned)

    result = promote_if_not_worse.fn(ScheduleConfig(registry=str(registry)), layout, str(tmp_path / "cache"))

    assert (result["outcome"], result["version"]) == ("kept", "v0001")
    assert "data.split.seed 42 -> 7" in result["reason"]
    assert "data.split.seed 42 -> 7" in json.loads((registry / HISTORY).read_text())[-1]["reason"]
    artifact = html.unescape(_markdown({**result, "stages_rerun": [], "seconds": 1.0}))
    assert "data.split.seed 42 -> 7" in artifact
