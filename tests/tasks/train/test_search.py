"""The hyperparameter search of `train.preset: best`, on features written by the real align step
and feature store (tests/tasks/train/test_boosted.py's planted data): its trials, what they
record, the members its winners become, and what `preset: fast` keeps."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from tasks.config import Params, params_from_dict
from tasks.data.align import ID
from tasks.scores.metrics import score
from tasks.train.boosted import SETTINGS, _settings, boost, boost_inputs
from tasks.train.plan import BOOSTED, FUSED, Budget, Skipped, member_plan, with_tuned
from tasks.train.search import (
    SEARCH,
    TRIAL_VAL_SHARE,
    HeadSearch,
    Trial,
    best_trial,
    run_search,
    searchers,
    trial_rows,
)
from tasks.train.training import _deterministic, predict, train_model
from tests.tasks.evaluate.test_summary import _detail, _with_members
from tests.tasks.train.test_boosted import COLUMNS, Prepared, _prepare

TRIALS = 3


def _params(**train: object) -> Params:
    return params_from_dict(
        {
            "data": {"sources": [{"path": "items.csv"}], "id": "item_id", "target": "label", "task": "binary",
                     "columns": COLUMNS.model_dump()},
            "fusion": {"head": "concat", "hidden": 32, "dropout": 0.0},
            "train": {"epochs": 4, "lr": 0.003, "batch_size": 128, "patience": 3, "seed": 0, "device": "cpu",
                      "preset": "best", "search_trials": TRIALS, **train},
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    with _deterministic(torch.device("cpu")):  # torch's one-off import of its compiler: not a trial's time
        pass
    return _prepare(tmp_path_factory.mktemp("search"), "binary")


@pytest.fixture(scope="module")
def searched(prepared: Prepared):
    features, rows = prepared
    params = _params()
    return params, run_search(searchers(params, features, rows), params, Budget.start(None))


def _by_study(trials: list[Trial], study: str) -> list[Trial]:
    return [t for t in trials if t.study == study]


def test_each_study_runs_its_trials_params_own_settings_first(searched) -> None:
    params, outcome = searched
    for study in (BOOSTED, FUSED):
        trials = _by_study(outcome.trials, study)
        assert [t.number for t in trials] == list(range(TRIALS))
        assert all(t.state in ("complete", "pruned") and math.isfinite(t.value) for t in trials)
    boosted, fused = _by_study(outcome.trials, BOOSTED), _by_study(outcome.trials, FUSED)
    assert boosted[0].settings == {k: SETTINGS[k] for k in boosted[0].settings}
    assert fused[0].settings == {"lr": 0.003, "weight_decay": 0.01, "epochs": 4, "hidden": 32, "dropout": 0.0}
    assert len({str(t.settings) for t in fused}) == TRIALS  # the sampler moved


def test_the_trials_are_recorded_for_ensemble_json_and_the_leaderboard(searched) -> None:
    _, outcome = searched
    entry = outcome.trials[1].tried()
    assert entry["kind"] == SEARCH and entry["status"].startswith("search trial")
    assert entry["name"] == "search_boosted_001" and entry["val"] == outcome.trials[1].value
    assert set(entry["settings"]) == {"num_leaves", "learning_rate", "min_data_in_leaf", "feature_fraction",
                                      "lambda_l2"}  # fmt: skip
    # evaluate's leaderboard: a row per trial with its val score, no test score, after the models
    from tasks.evaluate.summary import leaderboard_table

    detail = _with_members(_detail("multiclass", ("tabular", "text")))
    tuned = {"name": "boosted_tuned", "kind": BOOSTED, "status": "trained", "searched": entry["settings"]}
    detail["ensemble"]["tried"] += [tuned] + [t.tried() for t in outcome.trials]
    detail["members"]["boosted_tuned"] = {detail["primary_metric"]: 0.9}
    board = leaderboard_table(detail).set_index("model")
    row = board.loc["search_fused_000"]
    assert row["role"] == "search trial of fused" and row["val"] == outcome.trials[TRIALS].value
    assert math.isnan(row["test"]) and len(board) == 8 + len(outcome.trials)
    assert board.loc["boosted_tuned", "role"] == "boosted, tuned by the search"
    assert list(board.index[-len(outcome.trials) :]) == [t.name for t in outcome.trials]


def test_the_winners_become_members_that_train_to_their_trials_val_score(
    searched, prepared: Prepared
) -> None:
    """A tuned member is the best trial trained again like any member: on the trials' rows, the
    trial's own score (train then trains it on train and stops it on val, as any member)."""
    params, outcome = searched
    features, rows = trial_rows(*prepared, params.train.seed)
    winners = {study: best_trial(_by_study(outcome.trials, study), higher=True) for study in (BOOSTED, FUSED)}
    expected = {f"{study}_tuned" for study, best in winners.items() if best is not None and best.number != 0}
    assert {m.name for m in outcome.members} == expected
    val = features.split == "val"
    for member in outcome.members:
        best = winners[member.kind if member.kind == BOOSTED else FUSED]
        assert best is not None and dict(member.searched) == best.settings
        if member.kind == BOOSTED:  # the member's first booster (it bags three, a trial boosts one)
            inputs = boost_inputs(features, rows, COLUMNS, "binary")
            first = boost(inputs, None, member.train.seed, "best", overrides=dict(member.searched))
            predicted = inputs.val_predictions(first.model)
        else:
            assert member.fusion.options()["hidden"] == best.settings["hidden"]
            assert member.train.lr == best.settings["lr"] and member.train.epochs == best.settings["epochs"]
            trained = train_model(features, "binary", member.fusion, member.train, progress=False)
            predicted = predict(trained.model, features.rows(val), "binary", None)
        assert score("binary", "auc", features.target[val], predicted) == pytest.approx(best.value, abs=1e-12)


def test_the_trials_fit_and_score_on_train_rows_a_fifth_of_each_class_in_the_val_role(
    prepared: Prepared,
) -> None:
    """The val rows, on which ensemble selection weighs the tuned members, are not the trials'."""
    features, rows = prepared
    inner, inner_rows = trial_rows(features, rows, seed=0)
    train = features.split == "train"
    assert set(inner.ids) == set(features.ids[train]) and list(inner_rows[ID].astype(str)) == list(inner.ids)
    for label in (0.0, 1.0):
        of_class = inner.target == label
        assert (inner.split[of_class] == "val").sum() == round(TRIAL_VAL_SHARE * of_class.sum())
    assert set(inner.split) == {"train", "val"}
    other = trial_rows(features, rows, seed=1)[0]
    assert set(other.ids[other.split == "val"]) != set(inner.ids[inner.split == "val"])  # another seed
    first = np.flatnonzero(train)[:1]  # one train row: none to hold out, the splits stay as they are
    single = features.rows(first)
    assert trial_rows(single, rows.iloc[first], seed=0)[0] is single


def test_the_search_is_deterministic_without_a_time_limit(searched, prepared: Prepared) -> None:
    params, outcome = searched
    features, rows = prepared
    again = run_search(searchers(params, features, rows), params, Budget.start(None))
    assert [(t.settings, t.value, t.state) for t in again.trials] == [
        (t.settings, t.value, t.state) for t in outcome.trials
    ]


def test_a_time_limit_stops_the_search_at_its_share(prepared: Prepared) -> None:
    """No trial cap to speak of: the share of the time left ends the search, a trial at most past it."""
    features, rows = prepared
    params = _params(search_trials=10_000, search_share=0.5, epochs=10_000, patience=10_000)
    studies = searchers(params, features, rows)
    started = time.perf_counter()
    outcome = run_search(studies, params, Budget(time.time() + 4.0))  # a share of 2 s
    seconds = time.perf_counter() - started
    assert seconds < 2.0 + 1.0, seconds  # the last epoch (tens of ms here) and the tell: well inside 1 s
    for study in (BOOSTED, FUSED):  # each study had its turn; none ran out of trials
        assert 1 <= len(_by_study(outcome.trials, study)) < 10_000


def test_a_pruned_trial_stops_at_the_epoch_the_pruner_says(prepared: Prepared) -> None:
    features, _ = prepared
    search = HeadSearch(features, _params())
    heard: list[tuple[int, float]] = []

    def report(epoch: int, value: float) -> bool:
        heard.append((epoch, value))
        return epoch == 2

    run = search.run(search.defaults(), None, report)
    assert run.pruned and run.steps == 2 and [e for e, _ in heard] == [1, 2]
    assert run.value == heard[-1][1] and 0.5 < run.value <= 1.0  # val AUC of the epoch it stopped at


def test_a_trial_that_fails_is_recorded_not_raised(prepared: Prepared) -> None:
    """A learning rate at which training diverges (a FuselineError) ends that trial only."""
    features, _ = prepared
    search = HeadSearch(features, _params())
    settings = {**search.defaults(), "lr": 1e30}
    from tasks.train.search import _one_trial

    class Fixed:  # the part of optuna.Trial a trial uses: it never prunes here
        number = 7

        def report(self, value: float, step: int) -> None: ...

        def should_prune(self) -> bool:
            return False

    record = _one_trial(search, Fixed(), settings, None)  # type: ignore[arg-type]
    assert record.state == "failed" and "diverged" in record.note and record.value is None
    assert record.tried()["status"].startswith("search trial (failed: training diverged")
    assert best_trial([record], higher=True) is None


def test_fast_plans_what_it_did_and_boosts_with_the_same_settings() -> None:
    """`preset: fast` never searches: its plan is the four members, untouched by with_tuned."""
    params = _params(preset="fast")
    plan = member_plan(params, ["tabular", "text"])
    assert [(m.name, m.kind, m.modalities) for m in plan] == [
        (FUSED, "head", None), ("tabular", "head", ("tabular",)), ("text", "head", ("text",)),
        (BOOSTED, BOOSTED, None),
    ]  # fmt: skip
    assert all(m.fusion == params.fusion and m.train == params.train and not m.searched for m in plan)
    assert with_tuned(plan, []) == plan
    assert _settings("binary", 2, 0, 1000) == _settings("binary", 2, 0, 1000, {})
    assert {k: v for k, v in _settings("binary", 2, 0, 1000).items() if k in SETTINGS} == SETTINGS


def test_tuned_members_train_after_the_boosted_member_before_the_costly_ones() -> None:
    params = _params()
    plan = member_plan(params, ["tabular", "text"])
    tuned = [m for m in plan if m.name == FUSED][0]
    tuned = type(tuned)(f"{FUSED}_tuned", "head", tuned.fusion, tuned.train, searched=(("lr", 0.01),))
    names = [m.name for m in with_tuned(plan, [tuned])]
    assert names[: names.index(f"{FUSED}_tuned") + 2] == [FUSED, "tabular", "text", BOOSTED, f"{FUSED}_tuned",
                                                          f"{FUSED}_seed1"]  # fmt: skip


def test_a_skipped_member_says_why_in_tried() -> None:
    from flows.train import _tried

    params = _params()
    spec = member_plan(params, ["tabular", "text"])[-1]
    entry = _tried(spec, Skipped("estimated 812 s > 95 s left"))
    assert entry["status"] == "skipped (estimated 812 s > 95 s left)" and entry["seconds"] == 0.0
