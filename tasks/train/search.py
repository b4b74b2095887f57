"""The hyperparameter search of `train.preset: best`: Optuna on the cached features.

Two studies, each on what its member reads, so a trial costs seconds:

- the fused head (the head params name, on every modality): `lr`, `weight_decay`, the epoch
  cap and, where the head has them, `hidden` and `dropout`. A trial reports its val metric
  after every epoch, and a median pruner stops one that is below the median of the earlier
  trials at that epoch;
- the boosted member: `num_leaves`, `learning_rate`, `min_data_in_leaf`, `feature_fraction`
  and `lambda_l2`. Its inputs (category codes, each embedding block's principal components)
  are laid out once for all trials.

A trial trains exactly as the member would (tasks/train/training.py, boosted.py: same seed,
same early stopping), on rows of train's own (`trial_rows`): a seeded fifth of the train rows
(by class) plays val for the trials, and the val rows are left out of the search. Scored on
the val rows, the best of thirty trials was the one luckiest on them, and ensemble selection,
weighing members on the same rows, then trusted it too much: on PetFinder under `best` with
a 120 s limit the ensemble was the tuned booster alone. Its score is `evaluate.metric` at the
epoch (round) the member keeps. The first trial of each study is params' own settings, which
the preset trains anyway; when that first trial wins, the study adds no member. Otherwise the
best trial becomes a member (`fused_tuned`, `boosted_tuned`), trained from scratch on train
and stopped on val like any member, so selection sees its val score as honest as theirs.

Sampling is seeded (TPE, `train.seed`) and trials run one after another, so without a time
limit the search, capped at `train.search_trials` trials a study, is deterministic. With
`train.time_limit`, the search may use `train.search_share` of the time left when it starts
(split between the studies: what one leaves, the next may use); the trial running at the end
stops at its next epoch or round, as a member does at the time limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from modelzoo.registry import lookup
from tasks.config import FusionConfig, Params
from tasks.errors import FuselineError
from tasks.scores.metric_names import higher_is_better
from tasks.scores.metrics import score
from tasks.train.boosted import SETTINGS, BoostInputs, boost, boost_inputs
from tasks.train.dataset import FeatureSet
from tasks.train.plan import BOOSTED, FUSED, Budget, MemberSpec, boosted_skip_reason
from tasks.train.training import split_indices, train_model

if TYPE_CHECKING:  # optuna is imported when a search runs: `preset: fast` never loads it
    import optuna

SEARCH = "search"  # a trial's kind in ensemble.json's `tried`
TUNED = "_tuned"  # a searched member's name: <member>_tuned
HEAD_OPTIONS = ("hidden", "dropout")  # the head options searched, where the head declares them
HIDDEN_CHOICES = (64, 128, 256, 512)  # widths tried (params' own is always among them)
DECAY_FLOOR = 1e-6  # weight decay is searched on a log scale: params' 0 is tried as this
BOOSTED_SEARCHED = ("num_leaves", "learning_rate", "min_data_in_leaf", "feature_fraction", "lambda_l2")
# Prune only against a few finished trials, and never before a trial's third epoch: early
# epochs of a slower learning rate look worse than they end.
PRUNE_AFTER_TRIALS = 4
PRUNE_AFTER_EPOCHS = 2
TRIAL_VAL_SHARE = 0.2  # of the train rows: the trials' val rows (trial_rows)


@dataclass(frozen=True)
class Trial:
    """One finished trial: its settings, val score and how it ended."""

    study: str  # the member it tunes: fused | boosted
    number: int  # 0: params' own settings
    settings: dict[str, float]
    value: float | None  # val `evaluate.metric` at the kept epoch (pruned: at the last one run)
    state: str  # complete | pruned | failed
    steps: int  # epochs (rounds) run
    seconds: float
    note: str = ""  # why it failed

    @property
    def name(self) -> str:
        return f"{SEARCH}_{self.study}_{self.number:03d}"

    def status(self) -> str:
        if self.state == "pruned":
            return f"search trial (pruned after epoch {self.steps})"
        if self.state == "failed":
            return f"search trial (failed: {self.note})"
        return "search trial"

    def tried(self) -> dict[str, Any]:
        """Its entry in ensemble.json's `tried` (not a member: evaluate loads only `trained` ones)."""
        entry: dict[str, Any] = {
            "name": self.name,
            "kind": SEARCH,
            "searched": self.study,
            "status": self.status(),
            "settings": dict(sorted(self.settings.items())),
            "seconds": round(self.seconds, 2),
        }
        if self.value is not None and math.isfinite(self.value):
            entry["val"] = self.value
        return entry


@dataclass(frozen=True)
class TrialRun:
    """What a searcher's run of one trial gives back."""

    value: float
    steps: int
    pruned: bool = False


# A trial's report of its val score after `step`; True: the pruner stops it.
Report = Callable[[int, float], bool]
# How a trial runs: (study, number, settings, the trial itself) -> its record. The train flow
# makes each one a Prefect task; tests and callers without Prefect call it directly.
Runner = Callable[[str, int, dict[str, float], Callable[[], Trial]], Trial]


class Searcher(Protocol):
    """One study: what it tunes, its space, and how a trial trains and scores."""

    name: str  # the member tuned (FUSED, BOOSTED)
    prunes: bool  # whether its trials report per epoch

    def suggest(self, trial: optuna.Trial) -> dict[str, float]: ...

    def defaults(self) -> dict[str, float]: ...

    def run(self, settings: dict[str, float], deadline: float | None, report: Report) -> TrialRun: ...

    def member(self, settings: dict[str, float]) -> MemberSpec: ...


@dataclass
class HeadSearch:
    """The fused head's study: optimiser settings, the epoch cap, and the head's own width and dropout."""

    features: FeatureSet
    params: Params
    name: str = FUSED
    prunes: bool = True
    truth: np.ndarray = field(init=False, repr=False)  # val targets in the loop's order

    def __post_init__(self) -> None:
        _, val_at = split_indices(self.features)
        self.truth = self.features.target[val_at]

    def options(self) -> tuple[str, ...]:
        """The searched options the head declares (every dense head has both)."""
        declared = lookup("head", self.params.fusion.head).Config.model_fields  # type: ignore[attr-defined]
        return tuple(option for option in HEAD_OPTIONS if option in declared)

    def defaults(self) -> dict[str, float]:
        train, head = self.params.train, self.params.fusion.head_config()
        own = {"lr": train.lr, "weight_decay": train.weight_decay or DECAY_FLOOR, "epochs": train.epochs}
        return own | {option: getattr(head, option) for option in self.options()}

    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        """The space, wide enough around params' settings to hold them."""
        own = self.defaults()
        lr, decay, epochs = own["lr"], own["weight_decay"], int(own["epochs"])
        settings: dict[str, float] = {
            "lr": trial.suggest_float("lr", min(1e-4, lr), max(1e-2, lr), log=True),
            "weight_decay": trial.suggest_float(
                "weight_decay", min(DECAY_FLOOR, decay), max(0.1, decay), log=True
            ),  # fmt: skip
            "epochs": trial.suggest_int("epochs", max(1, epochs // 2), max(2, 2 * epochs)),
        }
        if "hidden" in own:
            choices = sorted({*HIDDEN_CHOICES, int(own["hidden"])})
            settings["hidden"] = trial.suggest_categorical("hidden", choices)
        if "dropout" in own:
            settings["dropout"] = trial.suggest_float("dropout", 0.0, max(0.5, float(own["dropout"])))
        return settings

    def run(self, settings: dict[str, float], deadline: float | None, report: Report) -> TrialRun:
        spec = self.member(settings)
        task, metric = self.params.data.task, self.params.evaluate.chosen(self.params.data.task)
        scores: list[float] = []
        pruned: list[bool] = []

        def on_epoch(epoch: int, predictions: np.ndarray) -> bool:
            scores.append(score(task, metric, self.truth, predictions))
            pruned.append(report(epoch, scores[-1]))
            return pruned[-1]

        result = train_model(
            self.features, task, spec.fusion, spec.train, progress=False, deadline=deadline,
            metric=self.params.evaluate.epoch_metric(task), on_epoch=on_epoch,
        )  # fmt: skip
        if pruned and pruned[-1]:
            return TrialRun(scores[-1], len(scores), pruned=True)
        return TrialRun(scores[result.best_epoch - 1], len(scores))

    def member(self, settings: dict[str, float]) -> MemberSpec:
        fusion, train = self.params.fusion, self.params.train
        head = {option: settings[option] for option in self.options() if option in settings}
        if "hidden" in head:
            head["hidden"] = int(head["hidden"])
        tuned_fusion = FusionConfig.model_validate({**fusion.options(), "head": fusion.head, **head})
        tuned_train = train.model_copy(
            update={
                "lr": settings["lr"],
                "weight_decay": settings["weight_decay"],
                "epochs": int(settings["epochs"]),
            }
        )
        return MemberSpec(FUSED + TUNED, "head", tuned_fusion, tuned_train, searched=_pairs(settings))


@dataclass
class BoostedSearch:
    """The boosted member's study: tree shape, learning rate and regularisation."""

    inputs: BoostInputs
    params: Params
    name: str = BOOSTED
    prunes: bool = False  # a trial takes seconds and stops on val itself

    def defaults(self) -> dict[str, float]:
        return {key: SETTINGS[key] for key in BOOSTED_SEARCHED}

    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        return {
            "num_leaves": trial.suggest_int("num_leaves", 4, 127, log=True),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 2, 100, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.2, 1.0),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 100.0, log=True),
        }

    def run(self, settings: dict[str, float], deadline: float | None, report: Report) -> TrialRun:
        task, train = self.params.data.task, self.params.train
        result = boost(
            self.inputs, self.params.evaluate.epoch_metric(task), train.seed, train.preset, deadline,
            train.class_weight, settings,
        )  # fmt: skip
        truth = self.inputs.target[self.inputs.val]
        value = score(
            task, self.params.evaluate.chosen(task), truth, self.inputs.val_predictions(result.model)
        )
        return TrialRun(value, len(result.history))

    def member(self, settings: dict[str, float]) -> MemberSpec:
        fusion, train = self.params.fusion, self.params.train
        return MemberSpec(BOOSTED + TUNED, BOOSTED, fusion, train, searched=_pairs(settings))


@dataclass(frozen=True)
class SearchOutcome:
    """Every trial, in the order run, and the members the winners become."""

    trials: list[Trial]
    members: list[MemberSpec]


def searchers(params: Params, features: FeatureSet, rows: pd.DataFrame) -> list[Searcher]:
    """The studies for this task, on `trial_rows`: the boosted member's first (its trials are the cheaper)."""
    features, rows = trial_rows(features, rows, params.train.seed)
    found: list[Searcher] = []
    if boosted_skip_reason(params.data.task) is None:
        inputs = boost_inputs(features, rows, params.data.columns, params.data.task)
        found.append(BoostedSearch(inputs, params))
    found.append(HeadSearch(features, params))
    return found


def trial_rows(features: FeatureSet, rows: pd.DataFrame, seed: int) -> tuple[FeatureSet, pd.DataFrame]:
    """The train rows alone, with a seeded `TRIAL_VAL_SHARE` of each class (of all rows for
    regression) in the val role: what the trials fit and score on (module docstring). Where
    that leaves no rows in one of the roles (a class of one row each), the splits as they are."""
    train = features.split == "train"
    target = features.target[train]
    rng = np.random.default_rng(seed)
    by_class = bool(features.classes) and target.ndim == 1  # a multilabel row holds several classes
    every_row = [np.arange(len(target))]
    groups = [np.flatnonzero(target == c) for c in np.unique(target)] if by_class else every_row
    val_at = np.concatenate(
        [rng.choice(g, int(round(TRIAL_VAL_SHARE * len(g))), replace=False) for g in groups if len(g) > 1]
        or [np.array([], dtype=int)]
    )
    if len(val_at) == 0 or len(val_at) == len(target):
        return features, rows
    role = np.full(len(target), "train", dtype=features.split.dtype)
    role[val_at] = "val"
    return replace(features.rows(train), split=role), rows[train].reset_index(drop=True)


def run_search(
    studies: list[Searcher], params: Params, budget: Budget, runner: Runner = lambda s, n, p, run: run()
) -> SearchOutcome:
    """Each study in turn, within `train.search_share` of `budget`'s time left."""
    search = budget.share(params.train.search_share)
    trials: list[Trial] = []
    members: list[MemberSpec] = []
    higher = higher_is_better(params.evaluate.chosen(params.data.task))
    for position, searcher in enumerate(studies):
        share = search.share(1 / (len(studies) - position))  # what a study leaves, the next may use
        ran = run_study(searcher, params.train.seed, share, params.train.search_trials, higher, runner)
        trials += ran
        best = best_trial(ran, higher)
        if best is not None and best.number != 0:
            members.append(searcher.member(best.settings))
    return SearchOutcome(trials, members)


def run_study(
    searcher: Searcher, seed: int, budget: Budget, max_trials: int, higher: bool, runner: Runner
) -> list[Trial]:
    """Up to `max_trials` trials, the first params' own settings, until `budget` runs out."""
    import optuna
    from optuna.pruners import MedianPruner
    from optuna.samplers import TPESampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the flow logs each trial itself
    study = optuna.create_study(
        direction="maximize" if higher else "minimize",
        sampler=TPESampler(seed=seed),
        pruner=MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS, n_warmup_steps=PRUNE_AFTER_EPOCHS),
    )
    study.enqueue_trial(searcher.defaults())
    trials: list[Trial] = []
    while len(trials) < max_trials and not budget.exhausted():
        trial = study.ask()
        settings = searcher.suggest(trial)
        run = partial(_one_trial, searcher, trial, settings, budget.deadline)
        record = runner(searcher.name, trial.number, settings, run)
        _tell(study, trial, record)
        trials.append(record)
    return trials


def best_trial(trials: list[Trial], higher: bool) -> Trial | None:
    """The completed trial with the best val score; ties go to the earlier (params' own first)."""
    finished = [t for t in trials if t.state == "complete" and t.value is not None and math.isfinite(t.value)]
    if not finished:
        return None
    return max(finished, key=lambda t: (t.value if higher else -t.value, -t.number))  # type: ignore[operator]


def _one_trial(
    searcher: Searcher, trial: optuna.Trial, settings: dict[str, float], deadline: float | None
) -> Trial:
    started = time.perf_counter()

    def report(step: int, value: float) -> bool:
        if not searcher.prunes or not math.isfinite(value):
            return False
        trial.report(value, step)
        return trial.should_prune()

    try:
        run = searcher.run(settings, deadline, report)
    except FuselineError as err:  # e.g. a learning rate at which training diverged
        seconds = time.perf_counter() - started
        return Trial(searcher.name, trial.number, settings, None, "failed", 0, seconds, str(err))
    state = "pruned" if run.pruned else "complete"
    return Trial(
        searcher.name, trial.number, settings, run.value, state, run.steps, time.perf_counter() - started
    )


def _tell(study: optuna.Study, trial: optuna.Trial, record: Trial) -> None:
    from optuna.trial import TrialState

    if record.state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    elif record.state == "complete" and record.value is not None and math.isfinite(record.value):
        study.tell(trial, record.value)
    else:  # failed, or a metric undefined on val
        study.tell(trial, state=TrialState.FAIL)


def _pairs(settings: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(settings.items()))
