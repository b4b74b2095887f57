"""Stage `train`: every member the preset names, then the ensemble of them chosen on val.

Members (tasks/train/plan.py): the fused head on all modalities, the same head on each
modality alone (the baselines evaluate compares against), the gradient-boosted member
(tasks/train/boosted.py), the scikit-learn linear baseline and, with `train.preset: best`,
more seeds, more heads, fine-tuned encoders (each modality that can) and the winners of a
hyperparameter search (tasks/train/search.py: the `train-search` subflow, each Optuna trial
its own `search-trial` task, the trials in a `fuseline-search` table artifact). Each member is
its own Prefect task, run on `runtime.task_runner` (one after another locally, in parallel on a
Dask or Ray cluster). Greedy ensemble selection on the val rows then weighs them
(tasks/train/ensemble.py), and with `train.refit` the members it kept are fitted again on train
+ val for the epochs val chose (tasks/train/refit.py, the `refit` task); models/ensemble.json
is what evaluate and prediction use.
Training them here keeps evaluate a pure measurement and lets DVC cache them together.

`train.time_limit` bounds the whole stage: the linear baseline is fitted first (seconds), the
search gets its share of what is left, the refit keeps back what refitting the members trained
so far would take (`RefitReserve`; `REFIT_SHARE` of the members' time on a cluster, where they
train side by side; a member whose refit would not fit in what is left keeps its train-only
fit), members after the deadline are skipped, the one running stops before an epoch that would
end past it, and a fine-tuned member whose lower pass and first epochs would not fit is
skipped saying so (tasks/train/finetuned_member.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows._entry import run_from_command_line
from flows._runtime import Unstored, task_runner_for
from tasks.atomic import atomic_dir, write_json, write_text
from tasks.config import Params, load_params
from tasks.data.align import recorded_target_type
from tasks.device import use_all_cores
from tasks.errors import ConfigError
from tasks.evaluate.evaluation import primary_score
from tasks.features.fitted import checked_states, copy_states, state_record
from tasks.features.mapped import mapped_root
from tasks.modalities import raw_text_columns
from tasks.paths import Layout
from tasks.scores.metric_names import ordered_classes_problem
from tasks.train.assemble import feature_metadata, load_feature_set, read_rows, rows_in_order
from tasks.train.boosted import BoostedResult, fit_boosted, write_boosted
from tasks.train.bundle import BASELINES, BundleMeta, write_bundle
from tasks.train.dataset import FeatureSet
from tasks.train.finetuned_member import FinetunedResult, OverBudget, fit_finetuned
from tasks.train.lineage import write_lineage
from tasks.train.members import (
    MEMBER_SECONDS,
    MEMBERS,
    SKLEARN_DIR,
    SKLEARN_LINEAR,
    HeadMember,
    LinearMember,
    Member,
    write_ensemble,
)
from tasks.train.plan import (
    BOOSTED,
    FUSED,
    REFIT_SHARE,
    Budget,
    MemberSpec,
    Skipped,
    boosted_skip_reason,
    member_plan,
    requested_finetuned,
    with_tuned,
)
from tasks.train.portable_linear import write_linear
from tasks.train.refit import LinearFit, RefitReserve, Refitted, refit_growth, refit_members
from tasks.train.search import SearchOutcome, Trial, run_search, searchers
from tasks.train.sklearn_baseline import TASKS as SKLEARN_TASKS
from tasks.train.sklearn_baseline import tune_linear_member
from tasks.train.stacking import combine
from tasks.train.training import TrainResult, train_model

SEARCH_KEY = "fuseline-search"  # a fixed artifact key: the UI keeps every run's trials as versions
Fitted = TrainResult | BoostedResult


@task(name="train-member", cache_policy=NO_CACHE)
def train_member(
    spec: MemberSpec, features: FeatureSet, params: Params, budget: Budget, aligned_path: str = ""
) -> Fitted | Skipped:
    """One member, or Skipped when the time limit leaves it no time (before or during its start)."""
    if budget.exhausted() and not spec.required:
        get_run_logger().info("%s: skipped, train.time_limit reached", spec.name)
        return Skipped("train.time_limit")
    rows = features if spec.modalities is None else features.only_modalities(set(spec.modalities))
    result: Fitted
    if spec.kind == BOOSTED:
        result = fit_boosted(
            rows, read_rows(aligned_path, features.ids), params.data.columns, params.data.task,
            params.evaluate.epoch_metric(params.data.task), spec.train.seed, preset=spec.train.preset,
            deadline=budget.deadline, class_weight=spec.train.class_weight,
            overrides=dict(spec.searched) or None,
        )  # fmt: skip
    elif spec.tuned is not None:
        try:
            result = fit_finetuned(rows, params, spec, budget, read_rows(aligned_path, features.ids))
        except OverBudget as over:
            get_run_logger().info("%s: skipped, %s (train.time_limit)", spec.name, over)
            return Skipped(str(over))
    else:
        task = params.data.task
        metric = params.evaluate.epoch_metric(task)
        result = train_model(rows, task, spec.fusion, spec.train, deadline=budget.deadline, metric=metric)
    get_run_logger().info(
        "%s: best %s %d of %d, %.1f s",
        "round" if spec.kind == BOOSTED else "epoch",
        spec.name,
        result.best_epoch,
        len(result.history),
        result.train_seconds,
    )
    return result


@flow(name="train-members")
def train_members(
    specs: list[MemberSpec],
    features: Unstored[FeatureSet],
    params: Params,
    budget: Budget,
    aligned_path: str,
    reserve: RefitReserve | None = None,
) -> list[Fitted | Skipped]:
    """Every member on whichever task runner this subflow was given (see `train`).

    With a `reserve` (train.refit, members one after another) each member is submitted once the
    one before it is done, with the refit's deadline less what refitting those before it would
    take; otherwise all at once, with `budget`.

    The aligned table travels as its path, not its rows: a flow run's parameters are stored by
    the Prefect server, which refuses large ones (and a fine-tuned member reads raw columns).
    The features travel `Unstored`, which Prefect records without copying them first.
    """
    if reserve is None:
        futures = [train_member.submit(spec, features.value, params, budget, aligned_path) for spec in specs]
        return [future.result() for future in futures]
    results: list[Fitted | Skipped] = []
    for spec in specs:
        member_budget = reserve.members_budget()
        result = train_member.submit(spec, features.value, params, member_budget, aligned_path).result()
        reserve.add(result)
        results.append(result)
    return results


@task(name="refit", cache_policy=NO_CACHE)
def refit(
    chosen: list[str],
    trained: dict[str, tuple[MemberSpec, Fitted]],
    linear: LinearFit | None,
    features: Unstored[FeatureSet],
    aligned: pd.DataFrame,
    params: Params,
    budget: Budget,
) -> Refitted:
    """The kept members fitted again on train + val (tasks/train/refit.py), as one task in the UI."""
    started = time.perf_counter()
    out = refit_members(chosen, trained, linear, features.value, aligned, params, budget)
    get_run_logger().info(
        "refit on %s rows: %s in %.1f s; kept as trained: %s", out.record.get("rows", 0),
        out.record.get("members", []), time.perf_counter() - started, out.record.get("kept", {}) or "none",
    )  # fmt: skip
    return out


@task(name="search-trial", cache_policy=NO_CACHE, task_run_name="search-{study}-{number}")
def search_trial(study: str, number: int, settings: dict[str, float], run: Callable[[], Trial]) -> Trial:
    """One Optuna trial as its own task, so the UI lists each with its settings, state and time."""
    record = run()
    get_run_logger().info(
        "%s: %s, val %s after %d %s, %.1f s, %s",
        record.name, record.status(), "n/a" if record.value is None else f"{record.value:.4f}",
        record.steps, "rounds" if study == BOOSTED else "epochs", record.seconds, record.settings,
    )  # fmt: skip
    return record


@task(name="publish-search", cache_policy=NO_CACHE)
def publish_search(trials: list[Trial], metric: str) -> None:
    """The trials as a table artifact (from a task: Prefect 3.8 drops artifacts made in a flow body)."""
    table = [
        {"trial": t.name, "status": t.status(), f"val {metric}": _finite(t.value),
         "seconds": round(t.seconds, 2), **t.settings}
        for t in trials
    ]  # fmt: skip
    create_table_artifact(
        key=SEARCH_KEY, table=table, description=f"train.preset best: hyperparameter trials, val {metric}"
    )


@flow(name="train-search")
def search(
    features: Unstored[FeatureSet], params: Params, budget: Budget, aligned_path: str
) -> SearchOutcome:
    """The Optuna studies of `train.preset: best` (tasks/train/search.py), each trial a task."""
    studies = searchers(params, features.value, read_rows(aligned_path, features.value.ids))
    outcome = run_search(studies, params, budget, search_trial)
    publish_search(outcome.trials, params.evaluate.chosen(params.data.task))
    get_run_logger().info(
        "search: %d trials; members added: %s",
        len(outcome.trials),
        [m.name for m in outcome.members] or "none",
    )
    return outcome


def bundle_meta(
    result: TrainResult,
    params: Params,
    features: FeatureSet,
    metadata: dict[str, dict],
    spec: MemberSpec | None = None,
    location: Path = Path("."),
) -> BundleMeta:
    """The JSON half of a member's bundle; `spec` gives its own head and seed (default: params').

    `location` is the bundle's directory under models/: a fitted encoder's record (tfidf)
    points from there to the one copy of its state, models/fitted/<modality>/.
    """
    fusion, train_cfg = (spec.fusion, spec.train) if spec else (params.fusion, params.train)
    scaling = result.target_scaling
    return BundleMeta(
        task=params.data.task,
        fusion=fusion.model_dump(),
        in_dims=dict(result.in_dims),
        out_dim=result.out_dim,
        classes=features.classes,
        target_scaling=(scaling.mean, scaling.std) if scaling else None,
        # the precision the features were encoded at travels with the fingerprint: predict reuses it
        encoders={
            m: {
                **meta["encoder"],
                "precision": meta.get("precision"),
                "dtype": meta.get("dtype", "float32"),  # prediction rounds its vectors the same way
                **_state_of(m, meta, location),
            }
            for m, meta in metadata.items()
            if "encoder" in meta
        },
        tabular=metadata.get("tabular", {}).get("tabular_state"),
        wide=metadata.get("tabular", {}).get("wide_state"),
        best_epoch=result.best_epoch,
        params=params.model_copy(update={"fusion": fusion, "train": train_cfg}).model_dump(mode="json"),
        metric=params.evaluate.chosen(params.data.task),
    )


def _refit_room(
    params: Params, budget: Budget, features: FeatureSet, linear: LinearFit | None
) -> tuple[RefitReserve | None, Budget]:
    """How the members leave the refit its time: a reserve they add to one after another (the
    local runner), or a fixed share on a cluster; and the budget of what comes first (the search)."""
    if not params.train.refit:
        return None, budget
    if params.runtime.task_runner != "local":
        return None, budget.share(1 - REFIT_SHARE)
    reserve = RefitReserve(budget, refit_growth(features))
    reserve.add(linear)
    return reserve, reserve.members_budget()


@flow(name="train")
def train(params_path: str = "params.yaml") -> dict[str, Any]:
    """Write models/ (members + ensemble.json, see tasks/train/members.py) and the learning curve."""
    params = load_params(params_path)
    layout = Layout()
    logger = get_run_logger()
    use_all_cores()
    budget = Budget.start(params.train.time_limit)  # the refit's deadline; the members' ends earlier
    features = load_feature_set(
        layout, params.data.task, positive=params.data.positive_class, mapped=mapped_root(params.cache.dir)
    )
    check_metric_classes(params, features.classes, params_path)
    metadata = feature_metadata(layout)
    states = checked_states(layout, metadata)  # fitted encoders (tfidf): copied into the bundle below
    aligned = pd.read_parquet(layout.aligned)
    target_type = recorded_target_type(layout.align_summary)  # recorded in each bundle for prediction
    specs = member_plan(params, features.modalities)
    runner = task_runner_for(params.runtime.task_runner, params.runtime.address, params.runtime.workers)
    started = time.perf_counter()
    aligned_path = str(layout.aligned.resolve())
    # The linear baseline first: it takes seconds, and it is fitted whatever the time limit.
    linear, linear_tried = _linear_member(params, aligned, features)
    searched = SearchOutcome([], [])
    reserve, members_budget = _refit_room(params, budget, features, linear)
    if params.train.preset == "best" and not members_budget.exhausted():
        searched = search(Unstored(features), params, members_budget, aligned_path)
        specs = with_tuned(specs, searched.members)
    results = train_members.with_options(task_runner=runner)(
        specs, Unstored(features), params, members_budget, aligned_path, reserve
    )
    trained = {
        spec.name: (spec, r) for spec, r in zip(specs, results, strict=True) if not isinstance(r, Skipped)
    }
    tried = [_tried(spec, r) for spec, r in zip(specs, results, strict=True)]
    skipped = boosted_skip_reason(params.data.task)
    if skipped is not None:
        logger.info("%s", skipped)
        tried.append({"name": BOOSTED, "kind": BOOSTED, "status": f"skipped ({skipped})", "seconds": 0.0})
    tried += linear_tried
    members: dict[str, Member] = {
        name: _as_member(spec, result, params, features, metadata) for name, (spec, result) in trained.items()
    }
    if linear is not None:
        members[SKLEARN_LINEAR] = LinearMember(linear.model)
    selection = _choose(params, members, features.of_split("val"), aligned, tried)
    selection["kinds"] = {name: trained[name][0].kind if name in trained else "sklearn" for name in members}
    tried += [trial.tried() for trial in searched.trials]  # after the members: they are not models
    logger.info("ensemble on val: %s", selection["members"])
    refitted = Refitted(trained, linear)
    if params.train.refit:
        refitted = refit(
            list(selection["members"]), trained, linear, Unstored(features), aligned, params, budget
        )
        trained, linear = refitted.trained, refitted.linear
        if refitted.record:
            selection["refit"] = refitted.record

    with atomic_dir(layout.models) as tmp:
        copy_states(tmp, layout, states)
        # the rows it saw, and those it learned from: the monitor's reference
        lineage = write_lineage(tmp, aligned, params.data.split, refitted.fitted_splits)
        for name, (spec, result) in trained.items():
            _write_member(
                tmp, name, spec, result, params, features, metadata, lineage if name == FUSED else None,
                target_type,
            )  # fmt: skip
        if linear is not None:
            write_linear(tmp / SKLEARN_DIR, linear.model)
        # Seconds stay out of models/: a rerun with the same params must give the same bytes.
        write_ensemble(tmp, selection, [{k: v for k, v in t.items() if k != "seconds"} for t in tried])
    fused = trained[FUSED][1]
    write_text(pd.DataFrame(fused.history).to_csv(index=False), layout.train_plots / "learning_curve.csv")
    write_json({t["name"]: t["seconds"] for t in tried}, layout.train_plots / MEMBER_SECONDS)
    return {"members": selection["members"], "seconds": round(time.perf_counter() - started, 1)}


def _linear_member(
    params: Params, aligned: pd.DataFrame, features: FeatureSet
) -> tuple[LinearFit | None, list[dict[str, Any]]]:
    """The scikit-learn linear baseline as a member, when the task and columns allow one, and
    its entry for `tried` (none without it)."""
    columns = params.data.columns
    if params.data.task not in SKLEARN_TASKS or not (
        raw_text_columns(columns) or columns.categorical or columns.numeric
    ):
        return None, []
    started = time.perf_counter()
    strength, linear = tune_linear_member(
        aligned, columns, params.data.task, features.classes, params.evaluate.baseline_max_rows,
        params.evaluate.chosen(params.data.task),
    )  # fmt: skip
    seconds = round(time.perf_counter() - started, 2)
    return LinearFit(linear, strength, seconds), [
        {"name": SKLEARN_LINEAR, "kind": "sklearn", "status": "trained", "seconds": seconds}
    ]


def _choose(
    params: Params, members: dict[str, Member], val: FeatureSet, aligned: pd.DataFrame, tried: list[dict]
) -> dict[str, Any]:
    """The ensemble chosen on val (each member's val score goes into `tried`), or one model."""
    task, metric = params.data.task, params.evaluate.chosen(params.data.task)
    val_predictions = {name: m.predict(val, rows_in_order(aligned, val.ids)) for name, m in members.items()}
    for entry in tried:
        if entry["name"] in val_predictions:
            entry["val"] = primary_score(task, val.target, val_predictions[entry["name"]], metric)
    if params.train.ensemble:
        return combine(task, val.target, val_predictions, metric=metric, mode=params.train.combine)
    # Without an ensemble, a requested fine-tuned model is the model (when trained in time);
    # the first modality's when several were asked for.
    requested = [name for name in requested_finetuned(params) if name in members]
    return {"members": {(requested or [FUSED])[0]: 1.0}, "selected_by": "train.ensemble: false"}


def check_metric_classes(params: Params, classes: tuple[str, ...], source: str = "params.yaml") -> None:
    """Refuse quadratic_kappa on classes that have no order, as soon as the classes are known."""
    problem = ordered_classes_problem(params.evaluate.chosen(params.data.task), classes)
    if problem is not None:
        raise ConfigError(f"{source}: evaluate.metric: {problem}")


def _tried(spec: MemberSpec, result: Fitted | Skipped) -> dict[str, Any]:
    if isinstance(result, Skipped):
        return {"name": spec.name, "kind": spec.kind, "status": f"skipped ({result.reason})", "seconds": 0.0}
    searched = {"searched": dict(spec.searched)} if spec.searched else {}
    if isinstance(result, BoostedResult):
        return {
            "name": spec.name,
            "kind": spec.kind,
            "seed": spec.train.seed,
            "status": "trained",
            "seconds": round(result.train_seconds, 2),
            "best_round": result.best_epoch,
            **searched,
        }
    return {
        "name": spec.name,
        "kind": spec.kind,
        "head": spec.fusion.head,
        "seed": spec.train.seed,
        "status": "trained",
        "seconds": round(result.train_seconds, 2),
        "best_epoch": result.best_epoch,
        **searched,
    }


def _finite(value: float | None) -> float | None:
    """NaN is not JSON: the artifact API would refuse the whole table for one undefined score."""
    return value if value is not None and math.isfinite(value) else None


def _as_member(
    spec: MemberSpec,
    result: Fitted,
    params: Params,
    features: FeatureSet,
    metadata: dict[str, dict],
) -> Member:
    if isinstance(result, BoostedResult):
        return result.model
    meta = bundle_meta(result, params, features, metadata, spec, _location(spec.name, spec))
    if isinstance(result, FinetunedResult):
        return result.member(meta)
    return HeadMember(result.model, meta)


def _write_member(
    models: Any,
    name: str,
    spec: MemberSpec,
    result: Fitted,
    params: Params,
    features: FeatureSet,
    metadata: dict[str, dict],
    lineage: dict[str, Any] | None = None,
    target_type: str | None = None,
) -> None:
    location = _location(name, spec)
    if isinstance(result, BoostedResult):
        write_boosted(models / location, result.model)
        return
    meta = bundle_meta(result, params, features, metadata, spec, location)
    meta = replace(meta, lineage=lineage, target_type=target_type)
    directory = models / location
    write_bundle(directory, result.model, meta)
    if isinstance(result, FinetunedResult):
        result.write_extras(directory)


def _location(name: str, spec: MemberSpec) -> Path:
    """A member's bundle directory relative to models/."""
    if name == FUSED:
        return Path(".")
    return Path(BASELINES if spec.modalities is not None else MEMBERS) / name


def _state_of(modality: str, meta: dict[str, Any], location: Path) -> dict[str, Any]:
    """{"state": ...} for a modality whose encoder was fitted on the data (tfidf), else {}."""
    files = (meta.get("state") or {}).get("files")
    return {} if files is None else {"state": state_record(modality, files, location)}


if __name__ == "__main__":
    run_from_command_line(train, "Train the fusion head and single-modality baselines.")
