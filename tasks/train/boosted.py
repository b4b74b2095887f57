"""A gradient-boosted member: LightGBM on the tabular columns plus the cached embeddings.

Trees are what wins on tabular-heavy data, and scikit-learn's trees only save with pickle, so
this member is LightGBM, whose models have their own text format (`Booster.model_to_string`)
that loads by parsing, never by running code. It reads:

- the categorical columns from the rows, as integer codes LightGBM splits on natively (the
  `MAX_CATEGORIES` most frequent train values; rarer and unseen values share one code, a
  missing cell is missing);
- the numeric columns from the rows, as they are (trees need no scaling; NaN is missing);
- every embedding block the pipeline cached (`text.<column>`, `image.<column>`, ...), each
  reduced to its leading `COMPONENTS` principal components fitted on the train rows (a row
  without that input is missing in all of them). Trees split one coordinate at a time: on
  hundreds of raw embedding coordinates they overfit a few thousand rows and train slowly.

Boosting stops on the val rows as the heads' epochs do: on the smooth val loss (log loss, or
squared error) under `evaluate.metric: auto`, else on the chosen metric with ties (frequent for
accuracy) going to the lower loss, as in ensemble selection; or at the time limit.

The member is the mean of `BAGS` boosters with consecutive seeds, each stopped on val on its
own. One booster's row and feature subsamples are redrawn whenever the rows change, so a
scheduled retrain on 5 % more rows moved it by up to 0.015 AUC on a fixed pool, and a
promotion gate cannot tell that apart from a real change; the mean of three moved a quarter
less and scored higher (demo season lineage: SD of version-to-version changes 0.0062 -> 0.0047,
mean AUC 0.7474 -> 0.7519), for three times the boosting (seconds beside the heads).

On disk (models/members/boosted/) it is each booster's trimmed text model (boosted.txt, then
boosted.bag<i>.txt), the PCA arrays as safetensors and a JSON of how the inputs are laid out,
with the digest of all of them; loading refuses any other. Format 1 (one booster) still loads.
Training is deterministic: fixed seeds, a fixed thread count, `deterministic` and a forced
histogram layout (LightGBM otherwise picks one by timing them).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, Unpack

import lightgbm as lgb
import numpy as np
import pandas as pd
from safetensors import SafetensorError
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from modelzoo.heads.blocks import is_wide_block
from tasks.config import ColumnsConfig
from tasks.data.align import SPLIT
from tasks.device import cores, one_library_thread
from tasks.errors import BundleError, DataError
from tasks.scores.metric_names import higher_is_better
from tasks.scores.metrics import score
from tasks.train.bundle import meta_digest
from tasks.train.dataset import REFIT_SPLITS, FeatureSet
from tasks.train.plan import BOOSTED_TASKS

MODEL = "boosted.txt"
ARRAYS = "boosted.safetensors"
META = "boosted.json"
FORMAT_VERSION = 2  # 2: BAGS boosters (boosted.txt, boosted.bag<i>.txt); 1: boosted.txt alone
READABLE_FORMATS = (1, 2)
BAGS = 3  # boosters averaged, seeds seed .. seed + BAGS - 1 (see the module docstring)
TABULAR = "tabular"  # the one-hot/scaled block: read as raw columns instead
MAX_CATEGORIES = 255  # codes per categorical column; the rest share one
COMPONENTS = 32  # principal components kept per embedding block
PCA_ROWS = 20_000  # train rows the directions are fitted on, at most (a seeded sample beyond)
CHUNK_ROWS = 65_536  # rows projected at a time: blocks may be memory-mapped, larger than RAM
MAX_ROUNDS = {"fast": 1000, "best": 3000}  # boosting rounds at most, by `train.preset`
PATIENCE = 50  # rounds without a better val score before stopping
# Fixed, not the machine's count, so a model does not depend on where it was trained. One: on two
# busy cores, two OpenMP threads made a 2-second fit take 10 to 100 seconds (they spin-wait).
THREADS = 1
# LightGBM's defaults, made slower to learn and more regularised for tables of a few thousand
# rows (on the demo and PetFinder, 15 leaves on half the features beat 31 on 80 % on val).
SETTINGS = {
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 5.0,
    "min_data_per_group": 20,
    "cat_smooth": 10.0,
    "max_bin": 63,  # as good on val as 255 on the demo, at 2.5 times less time a round
}
_OBJECTIVES = {"binary": "binary", "multiclass": "multiclass", "regression": "regression"}
_LOSS = "smooth_loss"  # the tie-breaker's name in LightGBM's evaluation list
_EPS = 1e-7


@dataclass(frozen=True)
class Layout:
    """Which inputs the model reads, in its feature order: categoricals, numerics, block components."""

    categorical: dict[str, list[str]]  # column -> categories, code = position
    numeric: list[str]
    blocks: dict[str, int]  # embedding block -> its width (the PCA arrays are in `arrays`)
    # mean.<block> (D,) and components.<block> (K, D): each block's principal directions
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def categorical_positions(self) -> list[int]:
        return list(range(len(self.categorical)))

    def matrix(self, features: FeatureSet, rows: pd.DataFrame) -> np.ndarray:
        """(N, F) float64: `rows` are the raw rows of `features`, in its order."""
        parts = [_codes(rows, column, categories) for column, categories in self.categorical.items()]
        parts += [_numbers(rows, column) for column in self.numeric]
        columns = [part[:, None] for part in parts]
        for block, width in self.blocks.items():
            columns.append(self._reduced(features, block, width))
        if not columns:
            return np.empty((len(rows), 0))
        return np.hstack(columns)

    def _reduced(self, features: FeatureSet, block: str, width: int) -> np.ndarray:
        """The block's principal components (N, K); NaN in every one where the row lacks the input."""
        if block not in features.inputs:
            raise BundleError(f"the boosted member reads block {block!r}, which these features lack")
        values = features.inputs[block]  # (N, D), perhaps memory-mapped
        if values.shape[1] != width:
            raise BundleError(
                f"block {block!r} has width {values.shape[1]}; the boosted member reads {width}"
            )
        mean, components = self.arrays[f"mean.{block}"], self.arrays[f"components.{block}"]
        reduced = np.empty((len(values), len(components)))  # (N, K)
        for start in range(0, len(values), CHUNK_ROWS):
            chunk = np.asarray(values[start : start + CHUNK_ROWS], dtype=np.float64)
            reduced[start : start + CHUNK_ROWS] = (chunk - mean) @ components.T
        reduced[~np.asarray(features.present[block], dtype=bool)] = np.nan
        return reduced

    def to_json(self) -> dict[str, Any]:
        # Ordered pairs, not objects: the feature order must survive sorted JSON keys.
        return {
            "categorical": [[column, values] for column, values in self.categorical.items()],
            "numeric": list(self.numeric),
            "blocks": [[block, width] for block, width in self.blocks.items()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], arrays: dict[str, np.ndarray]) -> Layout:
        return cls(
            categorical={str(column): [str(v) for v in values] for column, values in data["categorical"]},
            numeric=[str(column) for column in data["numeric"]],
            blocks={str(block): int(width) for block, width in data["blocks"]},
            arrays=arrays,
        )


@dataclass
class BoostedModel:
    """The trained boosters and their input layout: an ensemble member (tasks.train.members.Member)."""

    texts: tuple[str, ...]  # LightGBM's text models: what is written, and what `boosters` were parsed from
    layout: Layout
    task: str
    classes: tuple[str, ...]
    info: dict[str, Any]  # how it was trained: metric, rounds, settings (written to boosted.json)
    boosters: list[lgb.Booster] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.texts:
            raise ValueError("a boosted model needs at least one booster")
        self.boosters = [lgb.Booster(model_str=text) for text in self.texts]

    def predict(self, features: FeatureSet, rows: pd.DataFrame) -> np.ndarray:
        """P(second class) (N,), class probabilities (N, C) or values (N,): the heads' forms."""
        return self.predict_matrix(self.layout.matrix(features, rows))

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """The boosters' mean prediction of rows already laid out by `layout`."""
        total = np.asarray(self.boosters[0].predict(matrix, num_threads=THREADS), dtype=np.float64)
        for booster in self.boosters[1:]:
            total = total + booster.predict(matrix, num_threads=THREADS)
        return total / len(self.boosters)


@dataclass
class BoostedResult:
    """What train_member returns for this member: the model and how training went."""

    model: BoostedModel
    train_seconds: float
    history: list[dict[str, float]]  # val score (and loss) per round

    @property
    def best_epoch(self) -> int:
        """The round kept by the first booster (the name the other members' results use)."""
        return int(self.model.info["best_round"])


@dataclass(frozen=True)
class BoostInputs:
    """The booster's input matrix with its layout, target and splits: made once, boosted on as
    often as a search asks (the principal components are the costly part)."""

    layout: Layout
    matrix: np.ndarray  # (N, F) float64, every row of the features
    target: np.ndarray  # (N,)
    train: np.ndarray  # (N,) bool
    val: np.ndarray  # (N,) bool
    task: str
    classes: tuple[str, ...]

    def val_predictions(self, model: BoostedModel) -> np.ndarray:
        """`model`'s predictions of the val rows, in their order in the features."""
        return model.predict_matrix(self.matrix[self.val])


class BoostOptions(TypedDict, total=False):
    """boost's optional settings, which fit_boosted passes through (see boost)."""

    preset: str
    deadline: float | None
    class_weight: str | None
    overrides: Mapping[str, float] | None


def fit_boosted(
    features: FeatureSet,
    rows: pd.DataFrame,
    columns: ColumnsConfig,
    task: str,
    metric: str | None,
    seed: int,
    **options: Unpack[BoostOptions],
) -> BoostedResult:
    """Boost on the train rows of `features` (`rows` their aligned rows, same order), stopping on val."""
    started = time.perf_counter()
    inputs = boost_inputs(features, rows, columns, task)
    result = boost(inputs, metric, seed, bags=BAGS, **options)
    result.train_seconds = time.perf_counter() - started
    return result


def boost_inputs(features: FeatureSet, rows: pd.DataFrame, columns: ColumnsConfig, task: str) -> BoostInputs:
    """The layout fitted on the train rows of `features` and every row laid out by it."""
    if task not in BOOSTED_TASKS:
        raise ValueError(f"the boosted member supports {', '.join(BOOSTED_TASKS)}, not {task!r}")
    split = np.asarray(features.split)
    train, val = split == "train", split == "val"
    if not train.any() or not val.any():
        raise DataError("the boosted member needs train and val rows", column=SPLIT)
    layout = fit_layout(features, rows, columns, train)
    matrix = layout.matrix(features, rows)
    if matrix.shape[1] == 0:
        raise DataError("the boosted member has no input: no categorical, numeric or embedded column")
    return BoostInputs(layout, matrix, np.asarray(features.target), train, val, task, features.classes)


def boost(
    inputs: BoostInputs,
    metric: str | None,
    seed: int,
    preset: str = "fast",
    deadline: float | None = None,
    class_weight: str | None = None,
    overrides: Mapping[str, float] | None = None,
    bags: int = 1,
) -> BoostedResult:
    """Boost `bags` boosters (seeds `seed`, `seed` + 1, ...) on `inputs`' train rows, each
    stopping on its val rows; the model is their mean. A search's trials boost one.

    `metric` is what stops it (`evaluate.epoch_metric`: None for the val loss); `deadline` a
    time.time() after which boosting stops with the best round so far, and no further booster
    starts; `overrides` replace some of SETTINGS (a searched member's).
    """
    started = time.perf_counter()

    def one(bag: int) -> tuple[str, _Stopper, dict[str, Any]] | None:
        if bag and deadline is not None and time.time() >= deadline:
            return None
        return _boost_one(inputs, metric, (seed + bag) % 2**31, deadline, class_weight, overrides, preset)

    # Boosters side by side, one thread each: LightGBM leaves the GIL while it builds trees,
    # and each booster's trees depend on its own seed alone, not on what runs beside it.
    bags = max(1, bags)
    with ThreadPoolExecutor(max_workers=min(bags, cores())) as pool:
        fitted = [result for result in pool.map(one, range(bags)) if result is not None]
    texts = [text for text, _, _ in fitted]
    rounds = [
        {"seed": settings["seed"], "best_round": stopper.best_round, "rounds": len(stopper.history)}
        for _, stopper, settings in fitted
    ]
    history, settings = fitted[0][1].history, fitted[0][2]
    info = {
        "stopped_on": metric or "val loss",
        "best_round": rounds[0]["best_round"],
        "rounds": rounds[0]["rounds"],
        "bags": rounds,
        "settings": {**settings, "seed": seed},
        "lightgbm": lgb.__version__,
    }
    model = BoostedModel(tuple(texts), inputs.layout, inputs.task, inputs.classes, info)
    return BoostedResult(model, time.perf_counter() - started, history)


def _boost_one(
    inputs: BoostInputs,
    metric: str | None,
    seed: int,
    deadline: float | None,
    class_weight: str | None,
    overrides: Mapping[str, float] | None,
    preset: str,
) -> tuple[str, _Stopper, dict[str, Any]]:
    """One booster's text model (the rounds kept only), its stopper and its settings."""
    task, matrix, target, train, val = inputs.task, inputs.matrix, inputs.target, inputs.train, inputs.val
    n_classes = len(inputs.classes)
    settings = _settings(task, n_classes, seed, int(train.sum()), overrides)
    data = lgb.Dataset(
        matrix[train], target[train], weight=_weights(class_weight, task, target[train], n_classes),
        categorical_feature=inputs.layout.categorical_positions, feature_name=_names(matrix.shape[1]),
        params={"verbosity": -1}, free_raw_data=True,
    )  # fmt: skip
    valid = lgb.Dataset(matrix[val], target[val], reference=data)
    stopper = _Stopper(PATIENCE, deadline, metric is not None and higher_is_better(metric))
    booster = lgb.train(
        settings, data, num_boost_round=MAX_ROUNDS.get(preset, MAX_ROUNDS["fast"]), valid_sets=[valid],
        valid_names=["val"], feval=_evaluation(task, metric), callbacks=[stopper],
    )  # fmt: skip
    # Only the rounds kept are saved, and the member is the saved text read back: what is
    # served is exactly what was scored on val.
    return booster.model_to_string(num_iteration=stopper.best_round), stopper, settings


def refit_boosted(
    model: BoostedModel,
    features: FeatureSet,
    rows: pd.DataFrame,
    class_weight: str | None = None,
    overrides: Mapping[str, float] | None = None,
) -> BoostedModel:
    """Each of `model`'s boosters boosted afresh on the train and val rows, for the rounds val
    chose for it (tasks/train/refit.py), with its seed and settings; the layout (category codes,
    principal directions) stays the train rows'. `overrides` as boost's (a searched member's)."""
    fit = np.isin(np.asarray(features.split), REFIT_SPLITS)
    matrix = model.layout.matrix(features, rows)[fit]
    target, n_classes = np.asarray(features.target)[fit], len(model.classes)

    def one(bag: dict[str, Any]) -> str:
        settings = _settings(model.task, n_classes, int(bag["seed"]), len(target), overrides)
        data = lgb.Dataset(
            matrix, target, weight=_weights(class_weight, model.task, target, n_classes),
            categorical_feature=model.layout.categorical_positions, feature_name=_names(matrix.shape[1]),
            params={"verbosity": -1}, free_raw_data=True,
        )  # fmt: skip
        return lgb.train(settings, data, num_boost_round=max(1, int(bag["best_round"]))).model_to_string()

    bags = model.info["bags"]
    with ThreadPoolExecutor(max_workers=min(len(bags), cores())) as pool:  # side by side, as boost's
        texts = tuple(pool.map(one, bags))
    info = {**model.info, "refit": {"rows": len(target)}}
    return BoostedModel(texts, model.layout, model.task, model.classes, info)


def fit_layout(features: FeatureSet, rows: pd.DataFrame, columns: ColumnsConfig, train: np.ndarray) -> Layout:
    """Category codes and each embedding block's principal components, from the train rows only."""
    train_rows = rows.iloc[np.flatnonzero(train)]
    categorical = {column: _categories(train_rows[column]) for column in columns.categorical}
    blocks = [b for b in features.inputs if b != TABULAR and not is_wide_block(b)]
    arrays: dict[str, np.ndarray] = {}
    widths: dict[str, int] = {}
    for block in blocks:
        present = np.flatnonzero(train & np.asarray(features.present[block], dtype=bool))
        if len(present) < 2:  # nothing to learn a direction from
            continue
        if len(present) > PCA_ROWS:
            present = np.sort(np.random.default_rng(0).choice(present, PCA_ROWS, replace=False))
        mean, components = principal_components(np.asarray(features.inputs[block][present]), COMPONENTS)
        arrays[f"mean.{block}"], arrays[f"components.{block}"] = mean, components
        widths[block] = int(features.inputs[block].shape[1])
    return Layout(categorical, list(columns.numeric), widths, arrays)


def principal_components(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean (D,) and the leading `k` principal directions (k', D) of `values` (N, D).

    From the D x D covariance (D is an embedding's width, small beside N), on one BLAS thread
    so the sums, and so the model, do not depend on the machine's core count. Each direction's
    sign is fixed (its largest loading positive), as an eigen-solver's is arbitrary.
    """
    values = values.astype(np.float64)
    mean = values.mean(axis=0)
    centred = values - mean
    with one_library_thread():
        covariance = centred.T @ centred / max(len(values) - 1, 1)  # (D, D)
        eigenvalues, vectors = np.linalg.eigh(covariance)
    keep = min(k, values.shape[1], len(values) - 1)
    order = np.argsort(eigenvalues)[::-1][:keep]
    components = vectors[:, order].T  # (k', D)
    signs = np.sign(components[np.arange(keep), np.abs(components).argmax(axis=1)])
    return mean, components * np.where(signs == 0, 1.0, signs)[:, None]


def _categories(train: pd.Series) -> list[str]:
    """The most frequent train values (ties by value), at most MAX_CATEGORIES."""
    counts = train.astype("string").dropna().value_counts()
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [str(value) for value, _ in ranked[:MAX_CATEGORIES]]


def _codes(rows: pd.DataFrame, column: str, categories: list[str]) -> np.ndarray:
    """Position in `categories`; a value outside them gets one shared code, a missing cell NaN."""
    cells = rows[column].astype("string")
    missing = cells.isna().to_numpy()
    values = cells.fillna("").to_numpy(dtype=object)
    position = pd.Index(categories, dtype=object).get_indexer(values)
    codes = np.where(position >= 0, position, len(categories)).astype(np.float64)
    codes[missing] = np.nan
    return codes


def _numbers(rows: pd.DataFrame, column: str) -> np.ndarray:
    values = pd.to_numeric(rows[column], errors="coerce").astype("float64").to_numpy(na_value=np.nan)
    return np.where(np.isfinite(values), values, np.nan)


def _names(width: int) -> list[str]:
    """Plain feature names: LightGBM refuses JSON characters, which column names may hold."""
    return [f"f{i}" for i in range(width)]


def _settings(
    task: str, n_classes: int, seed: int, train_rows: int, overrides: Mapping[str, float] | None = None
) -> dict[str, Any]:
    chosen = {**SETTINGS, **(overrides or {})}
    settings: dict[str, Any] = {
        "objective": _OBJECTIVES[task],
        "metric": "None",  # the project's own metric is given as feval
        **chosen,
        "min_data_in_leaf": min(chosen["min_data_in_leaf"], max(2, train_rows // 20)),
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": THREADS,
        "verbosity": -1,
    }
    if task == "multiclass":
        settings["num_class"] = n_classes
    return settings


def _weights(class_weight: str | None, task: str, target: np.ndarray, n_classes: int) -> np.ndarray | None:
    """`train.class_weight: balanced` as row weights, as the heads weigh their loss."""
    if class_weight != "balanced" or task == "regression":
        return None
    if task == "multiclass":
        counts = np.bincount(target.astype(np.int64), minlength=n_classes).astype(np.float64)
        per_class = np.where(counts > 0, len(target) / (n_classes * np.maximum(counts, 1)), 1.0)
        return per_class[target.astype(np.int64)]
    positives = float(target.sum())
    negatives = len(target) - positives
    weight = negatives / positives if positives and negatives else 1.0
    return np.where(target > 0.5, weight, 1.0)


def _evaluation(task: str, metric: str | None) -> Any:
    """feval: what stops boosting first (the chosen metric, scored by tasks.scores as everywhere
    else), then the smooth loss that breaks its ties (alone when no metric is chosen)."""

    def evaluate(predictions: np.ndarray, data: lgb.Dataset) -> list[tuple[str, float, bool]]:
        y = np.asarray(data.get_label())
        p = np.asarray(predictions, dtype=np.float64)
        loss = (_LOSS, smooth_loss(task, y, p), False)
        if metric is None:
            return [loss]
        return [(metric, score(task, metric, y, p), higher_is_better(metric)), loss]

    return evaluate


def smooth_loss(task: str, y: np.ndarray, prediction: np.ndarray) -> float:
    """Log loss of probabilities, or mean squared error of values: what breaks ties in the metric."""
    if task == "regression":
        return float(np.mean((prediction - y) ** 2))
    if task == "multiclass":
        picked = prediction[np.arange(len(y)), y.astype(np.int64)]
        return float(-np.mean(np.log(np.clip(picked, _EPS, 1.0))))
    p = np.clip(prediction, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@dataclass(eq=False)  # LightGBM keeps its callbacks in a set: hashed by identity
class _Stopper:
    """LightGBM callback: keep the best round by (metric, then lower loss); stop after `patience`
    rounds without one, or at the deadline."""

    patience: int
    deadline: float | None
    higher: bool
    best_round: int = 0  # 1-based; 0 before the first round
    best_key: tuple[float, float] = (-math.inf, -math.inf)
    best_scores: list[Any] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    order: int = 30  # after LightGBM's own callbacks

    def __call__(self, env: Any) -> None:
        results = {entry[1]: float(entry[2]) for entry in env.evaluation_result_list}
        value, loss = next(iter(results.values())), results[_LOSS]
        self.history.append({"round": env.iteration + 1, **results})
        signed = value if self.higher else -value
        key = (signed if math.isfinite(signed) else -math.inf, -loss)  # undefined metric: loss decides
        if self.best_round == 0 or key > self.best_key:
            self.best_round, self.best_key = env.iteration + 1, key
            self.best_scores = list(env.evaluation_result_list)
        stale = env.iteration + 1 - self.best_round >= self.patience
        if stale or (self.deadline is not None and time.time() >= self.deadline):
            raise lgb.callback.EarlyStopException(self.best_round - 1, self.best_scores)


# --- on disk ----------------------------------------------------------------------------------


def write_boosted(directory: Path, model: BoostedModel) -> None:
    """Each booster's text model, boosted.safetensors and boosted.json (with the digest of all)."""
    directory.mkdir(parents=True, exist_ok=True)
    texts = [text.encode("utf-8") for text in model.texts]
    arrays = save_arrays({k: np.ascontiguousarray(v) for k, v in sorted(model.layout.arrays.items())})
    meta = {
        "format_version": FORMAT_VERSION,
        "task": model.task,
        "classes": list(model.classes),
        "layout": model.layout.to_json(),
        "info": model.info,
        "boosters": len(texts),
    }
    meta = json.loads(json.dumps(meta))  # the digest covers what a reader will parse back
    meta["digest"] = {
        "model": hashlib.sha256(texts[0]).hexdigest(),
        "bags": [hashlib.sha256(text).hexdigest() for text in texts[1:]],
        "arrays": hashlib.sha256(arrays).hexdigest(),
        "meta": meta_digest(meta),
    }
    for name, text in zip(_model_files(len(texts)), texts, strict=True):
        (directory / name).write_bytes(text)
    (directory / ARRAYS).write_bytes(arrays)
    (directory / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def _model_files(boosters: int) -> list[str]:
    """boosted.txt, then boosted.bag1.txt, boosted.bag2.txt, ..."""
    return [MODEL] + [f"boosted.bag{i}.txt" for i in range(1, boosters)]


def read_boosted(directory: Path) -> BoostedModel:
    """The stored member; a one-line BundleError naming the file unless every part is intact."""
    directory = Path(directory)
    meta_path = directory / META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{directory}: unreadable boosted model ({_one_line(err)})") from None
    if not isinstance(meta, dict) or meta.get("format_version") not in READABLE_FORMATS:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise BundleError(f"{meta_path}: boosted model format {version!r} is not supported")
    boosters = meta.get("boosters", 1)
    if not isinstance(boosters, int) or isinstance(boosters, bool) or boosters < 1:
        raise BundleError(f"{meta_path}: unreadable boosted model (boosters {boosters!r})")
    try:
        texts = [(directory / name).read_bytes() for name in _model_files(boosters)]
        arrays = (directory / ARRAYS).read_bytes()
    except OSError as err:
        raise BundleError(f"{directory}: unreadable boosted model ({_one_line(err)})") from None
    _check_digest(directory, meta, texts, arrays)
    try:
        task, classes = str(meta["task"]), tuple(str(c) for c in meta["classes"])
        layout = Layout.from_json(meta["layout"], dict(load_arrays(arrays)))
        decoded = tuple(text.decode("utf-8") for text in texts)
        model = BoostedModel(decoded, layout, task, classes, dict(meta.get("info", {})))
    except (KeyError, TypeError, ValueError, SafetensorError, lgb.basic.LightGBMError) as err:
        raise BundleError(f"{meta_path}: unreadable boosted model ({_one_line(err)})") from None
    for booster in model.boosters:
        _check_consistency(meta_path, task, classes, booster)
    return model


def _check_digest(directory: Path, meta: dict[str, Any], texts: list[bytes], arrays: bytes) -> None:
    digest = meta.get("digest")
    if not isinstance(digest, dict):
        raise BundleError(f"{directory / META}: has no digest; retrain (dvc repro) or restore it")
    expected = [digest.get("model"), *(digest.get("bags") or [])]
    parts = [*zip(_model_files(len(texts)), texts, strict=True), (ARRAYS, arrays)]
    expected.append(digest.get("arrays"))
    if len(expected) != len(parts):
        raise BundleError(
            f"{directory / META}: lists {len(expected) - 1} model files, not {len(texts)}; "
            "retrain (dvc repro) or restore it"
        )
    for (name, data), wanted in zip(parts, expected, strict=True):
        if wanted != hashlib.sha256(data).hexdigest():
            raise BundleError(
                f"{directory / name}: changed after the boosted model was written (digest mismatch); "
                "retrain (dvc repro) or restore it"
            )
    if digest.get("meta") != meta_digest(meta):
        raise BundleError(
            f"{directory / META}: edited after the boosted model was written (digest mismatch); "
            "retrain (dvc repro) or restore it"
        )


def _check_consistency(meta_path: Path, task: str, classes: tuple[str, ...], booster: lgb.Booster) -> None:
    """Task, classes and the booster's outputs agree (they always do in what train writes)."""
    outputs = booster.num_model_per_iteration()
    expected = len(classes) if task == "multiclass" else 1
    if task not in BOOSTED_TASKS or outputs != expected:
        raise BundleError(
            f"{meta_path}: a {task!r} boosted model with {len(classes)} classes cannot have "
            f"{outputs} outputs per round; refusing to load"
        )


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
