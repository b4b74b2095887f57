"""The baseline a data scientist would build first: scikit-learn on the raw aligned table.

No neural encoders: TF-IDF for text, one-hot categoricals, scaled numerics, into a linear
model, and the same table into gradient-boosted trees. It is fitted on exactly the rows the
fused model trained on and scored on the same test rows, so the deep model's number never
has to be taken on faith. Images are the one modality it cannot use, by design.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from tasks.config import ColumnsConfig
from tasks.data.align import ID, SPLIT, TARGET
from tasks.device import one_library_thread
from tasks.errors import DataError
from tasks.modalities import raw_text_columns
from tasks.scores.metrics import compute_metrics, higher_is_better, resolve_metric
from tasks.train.assemble import encode_target
from tasks.train.portable_linear import RAW_TEXT, PortableLinear, export_linear

TASKS = ("binary", "multiclass", "regression")  # the tasks it has a model for
LINEAR_STRENGTHS = (0.1, 1.0, 10.0)  # C for logistic regression, 1/alpha for ridge
TEXT_SVD_COMPONENTS = 64
# Three settings for the trees, as three strengths for the linear model: an equal tuning budget.
TREE_SETTINGS = (
    {"learning_rate": 0.1, "max_leaf_nodes": 31},
    {"learning_rate": 0.05, "max_leaf_nodes": 15},
    {"learning_rate": 0.1, "max_leaf_nodes": 15, "l2_regularization": 1.0},
)
_MISSING = "<missing>"
_TOKEN = r"(?u)\b\w+\b"
_SEED = 0


@dataclass(frozen=True)
class SklearnBaseline:
    """The candidate chosen on validation rows, its test predictions, and every candidate's scores."""

    selected: str
    selected_by: str  # e.g. "val auc": chosen on validation rows, never on test
    test_predictions: np.ndarray  # same form as tasks.train.training.predict, in test-row order
    test_ids: np.ndarray
    candidates: dict[str, dict] = field(default_factory=dict)  # name -> {settings, val, test}
    seconds: float = 0.0
    train_rows: int = 0  # rows it was fitted on
    train_rows_available: int = 0  # train rows there were (more: it fitted on a seeded sample)


def fit_sklearn_baseline(
    aligned: pd.DataFrame,
    columns: ColumnsConfig,
    task: str,
    classes: tuple[str, ...] = (),
    max_rows: int | None = None,
    metric: str | None = None,
) -> SklearnBaseline:
    """Fit a linear model (regularisation tuned on val) and boosted trees; keep the better on val.

    `aligned` is data/aligned/aligned.parquet; `classes` the fused model's class order, so the
    probability columns line up with its predictions. With more train rows than `max_rows`
    (`evaluate.baseline_max_rows`) it fits on a seeded sample of them. Every choice is made on
    val `metric` (`evaluate.metric`; None: the task's default).
    """
    with _fitting(task):
        return _fit(aligned, columns, task, classes, max_rows, resolve_metric(task, metric))


@contextmanager
def _fitting(task: str) -> Iterator[None]:
    """Refuse a task the baseline has no model for; fit within it on one thread.

    One thread for OpenMP and BLAS: torch loads its own OpenMP runtime into the evaluate and
    train processes, and two runtimes spinning on shared cores slow boosting and the SVD's QR
    many times over. The baseline's tables are small: one thread costs little.
    """
    if task not in TASKS:
        raise ValueError(f"the sklearn baseline supports {', '.join(TASKS)}, not {task!r}")
    with one_library_thread():
        yield


def _fit(
    aligned: pd.DataFrame,
    columns: ColumnsConfig,
    task: str,
    classes: tuple[str, ...],
    max_rows: int | None,
    primary: str,
) -> SklearnBaseline:
    started = time.perf_counter()
    parts, roles, classes, available = _parts(
        aligned, columns, task, classes, ("train", "val", "test"), max_rows
    )
    n_classes = len(classes) if task == "multiclass" else 2
    sign = 1.0 if higher_is_better(primary) else -1.0

    candidates: dict[str, dict] = {}
    test_predictions: dict[str, np.ndarray] = {}
    for name, settings, model in _candidates(task, roles, parts, n_classes, primary):
        predicted = {s: _predict(model, x, task, n_classes) for s, (x, _) in parts.items() if s != "train"}
        candidates[name] = {
            **settings,
            **{s: compute_metrics(task, parts[s][1], predicted[s], primary) for s in predicted},
        }
        test_predictions[name] = predicted["test"]
    selected = max(candidates, key=lambda n: sign * candidates[n]["val"][primary])
    return SklearnBaseline(
        selected=selected,
        selected_by=f"val {primary}",
        test_predictions=test_predictions[selected],
        test_ids=aligned.loc[aligned[SPLIT].to_numpy() == "test", ID].astype(str).to_numpy(dtype=object),
        candidates=candidates,
        seconds=time.perf_counter() - started,
        train_rows=len(parts["train"][0]),
        train_rows_available=available,
    )


def _parts(
    aligned: pd.DataFrame,
    columns: ColumnsConfig,
    task: str,
    classes: tuple[str, ...],
    splits: tuple[str, ...],
    max_rows: int | None,
) -> tuple[dict[str, tuple[pd.DataFrame, np.ndarray]], dict[str, list[str]], tuple[str, ...], int]:
    """(x, y) per split, the usable columns, the classes, and how many train rows there were.

    Train is cut to a seeded sample of `max_rows` when larger, so a million-row table costs
    the baseline what a hundred thousand do; val and test are always whole.
    """
    roles = _usable_columns(aligned, columns)
    target, classes = encode_target(aligned[TARGET], task, classes or None)
    split = aligned[SPLIT].to_numpy()
    train = np.flatnonzero(split == "train")
    available = len(train)
    if max_rows is not None and available > max_rows:
        train = np.sort(np.random.default_rng(_SEED).choice(train, max_rows, replace=False))
    positions = {s: train if s == "train" else np.flatnonzero(split == s) for s in splits}
    parts = {s: (clean_frame(aligned.iloc[rows], roles), target[rows]) for s, rows in positions.items()}
    if any(not len(parts[s][0]) for s in ("train", "val") if s in parts):
        raise DataError("the sklearn baseline needs train and val rows", column=SPLIT)
    return parts, roles, classes, available


# --- the candidates ---------------------------------------------------------------------


def _candidates(
    task: str, roles: dict[str, list[str]], parts: dict, n_classes: int, metric: str
) -> list[tuple[str, dict, Pipeline]]:
    """(name, settings, fitted model): the linear model and boosted trees, each tuned on val.

    Both families get the same budget (three settings each, chosen on val), so the one kept
    is not simply the one that was tuned on the rows it is then compared on.
    """
    strength, linear = _tuned_linear(task, roles, parts, n_classes, metric)
    linear_name = "ridge" if task == "regression" else "logistic_regression"
    key = "alpha" if task == "regression" else "C"
    linear_value = 1.0 / strength if task == "regression" else strength
    tree_settings, trees = _tuned_trees(task, roles, parts, n_classes, metric)
    return [
        (linear_name, {key: linear_value}, linear),
        ("hist_gradient_boosting", tree_settings, trees),
    ]


def _tuned_trees(
    task: str, roles: dict[str, list[str]], parts: dict, n_classes: int, metric: str | None = None
) -> tuple[dict, Pipeline]:
    """Boosted trees with the settings that score best on val; features are fitted once for all."""
    x_train, y_train = parts["train"]
    features = _tree_features(roles).fit(x_train)
    train_matrix = features.transform(x_train)
    n_categorical = len(roles["categorical"])

    def trees(settings: dict) -> Pipeline:
        model = _tree_model(task, n_categorical, settings).fit(train_matrix, y_train)
        return Pipeline([("features", features), ("model", model)])

    fitted = ((settings, trees(settings)) for settings in TREE_SETTINGS)
    settings, pipeline = _best_on_val(task, parts["val"], n_classes, fitted, metric)
    return dict(settings), pipeline


def _tuned_linear(
    task: str, roles: dict[str, list[str]], parts: dict, n_classes: int, metric: str | None = None
) -> tuple[float, Pipeline]:
    """The linear pipeline with the regularisation strength that scores best on val."""
    fitted = (
        (strength, _linear_pipeline(task, roles, strength, *parts["train"])) for strength in LINEAR_STRENGTHS
    )
    return _best_on_val(task, parts["val"], n_classes, fitted, metric)


def _linear_pipeline(
    task: str, roles: dict[str, list[str]], strength: float, x: pd.DataFrame, y: np.ndarray
) -> Pipeline:
    """The linear features and model at one regularisation strength, fitted on (x, y)."""
    return make_pipeline(_linear_features(roles), _linear_model(task, strength)).fit(x, y)


def _best_on_val(
    task: str,
    val: tuple[pd.DataFrame, np.ndarray],
    n_classes: int,
    fitted: Iterable[tuple[Any, Pipeline]],
    metric: str | None = None,
) -> tuple[Any, Pipeline]:
    """The (setting, model) pair whose predictions score best on the val rows by `metric`
    (None: the task's default).

    The first wins ties; where the metric is undefined (AUC on a one-class val split) no
    comparison holds and the setting already kept stays, so a tiny val split never fails.
    """
    x_val, y_val = val
    metric = resolve_metric(task, metric)
    sign = 1.0 if higher_is_better(metric) else -1.0
    best: tuple[float, Any, Pipeline] | None = None
    for setting, model in fitted:
        value = sign * compute_metrics(task, y_val, _predict(model, x_val, task, n_classes), metric)[metric]
        if best is None or value > best[0]:
            best = (value, setting, model)
    assert best is not None
    return best[1], best[2]


def tune_linear_member(
    aligned: pd.DataFrame,
    columns: ColumnsConfig,
    task: str,
    classes: tuple[str, ...] = (),
    max_rows: int | None = None,
    metric: str | None = None,
) -> tuple[float, PortableLinear]:
    """The tuned linear baseline in portable form (the scikit-learn model an ensemble can
    carry) and the strength val `metric` chose for it (None: the task's default), as
    fit_sklearn_baseline chooses it; a refit reuses the strength.

    scikit-learn's boosted trees are not offered as a member: their fitted trees have no
    stable format outside pickle, and a bundle never holds pickle. The ensemble's trees are
    LightGBM's (the boosted member, tasks/train/boosted.py), saved in LightGBM's text format.
    """
    with _fitting(task):
        parts, roles, classes, _ = _parts(aligned, columns, task, classes, ("train", "val"), max_rows)
        n_classes = len(classes) if task == "multiclass" else 2
        strength, pipeline = _tuned_linear(task, roles, parts, n_classes, resolve_metric(task, metric))
        return strength, export_linear(pipeline, task, n_classes, _TOKEN)


def refit_linear_member(
    aligned: pd.DataFrame,
    columns: ColumnsConfig,
    task: str,
    strength: float,
    classes: tuple[str, ...] = (),
    max_rows: int | None = None,
) -> PortableLinear:
    """The linear member at `strength` (val's choice) fitted on the train and val rows
    together (tasks/train/refit.py); `max_rows` caps them as it caps train."""
    pooled = aligned.assign(**{SPLIT: aligned[SPLIT].where(aligned[SPLIT] != "val", "train")})
    with _fitting(task):
        parts, roles, classes, _ = _parts(pooled, columns, task, classes, ("train",), max_rows)
        n_classes = len(classes) if task == "multiclass" else 2
        pipeline = _linear_pipeline(task, roles, strength, *parts["train"])
        return export_linear(pipeline, task, n_classes, _TOKEN)


def predict_linear(linear: PortableLinear, rows: pd.DataFrame) -> np.ndarray:
    """The portable linear model on aligned(-like) rows: raw columns cleaned as in fitting."""
    return linear.predict(clean_frame(rows, linear.roles()))


def _linear_model(task: str, strength: float) -> LogisticRegression | Ridge:
    if task == "regression":
        return Ridge(alpha=1.0 / strength)
    return LogisticRegression(C=strength, max_iter=2000)


def _tree_model(
    task: str, n_categorical: int, settings: dict | None = None
) -> HistGradientBoostingClassifier | HistGradientBoostingRegressor:
    # _tree_features puts the categorical columns first, so their positions are 0..n-1.
    categorical = list(range(n_categorical)) or None
    # early_stopping holds out 10 % of the train rows, so val stays untouched for selection.
    options = {"categorical_features": categorical, "early_stopping": True, "random_state": _SEED}
    options |= settings or {}
    if task == "regression":
        return HistGradientBoostingRegressor(**options)
    return HistGradientBoostingClassifier(**options)


def _linear_features(roles: dict[str, list[str]]) -> ColumnTransformer:
    """Sparse TF-IDF per text column + one-hot categoricals + imputed, scaled numerics."""
    parts: list[tuple[str, object, object]] = [(f"text_{c}", _tfidf(), c) for c in roles[RAW_TEXT]]
    if roles["categorical"]:
        parts.append(("categorical", OneHotEncoder(handle_unknown="ignore"), roles["categorical"]))
    if roles["numeric"]:
        numeric = make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler())
        parts.append(("numeric", numeric, roles["numeric"]))
    return ColumnTransformer(parts)


def _tree_features(roles: dict[str, list[str]]) -> ColumnTransformer:
    """Ordinal categoricals (first) + raw numerics + each text column's TF-IDF reduced by SVD.

    Boosted trees need dense input and cannot split usefully on 20k sparse TF-IDF columns, so
    text is compressed to its leading SVD components (latent semantic analysis) first.
    """
    parts: list[tuple[str, object, object]] = []
    if roles["categorical"]:
        ordinal = OrdinalEncoder(
            handle_unknown="use_encoded_value", unknown_value=np.nan, max_categories=250
        )  # HistGradientBoosting accepts at most 255 categories per feature
        parts.append(("categorical", ordinal, roles["categorical"]))
    if roles["numeric"]:
        parts.append(("numeric", "passthrough", roles["numeric"]))  # trees handle NaN natively
    parts += [
        (f"text_{c}", make_pipeline(_tfidf(), _ClampedSVD(TEXT_SVD_COMPONENTS)), c) for c in roles[RAW_TEXT]
    ]
    return ColumnTransformer(parts, sparse_threshold=0.0)


def _tfidf() -> TfidfVectorizer:
    # Tokens of one character count too (sizes, grades, model letters), unlike sklearn's default.
    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=20000, token_pattern=_TOKEN)


class _ClampedSVD(TransformerMixin, BaseEstimator):
    """TruncatedSVD that asks for fewer components when the vocabulary or row count is small."""

    def __init__(self, n_components: int) -> None:
        self.n_components = n_components

    def fit(self, x: object, y: object = None) -> _ClampedSVD:
        n_rows, n_features = x.shape  # type: ignore[attr-defined]
        k = min(self.n_components, n_features - 1, n_rows - 1)
        # A one-word vocabulary has nothing to compress: pass the TF-IDF column through.
        self.svd_ = TruncatedSVD(n_components=k, random_state=_SEED).fit(x) if k >= 1 else None
        return self

    def transform(self, x: object) -> np.ndarray:
        return self.svd_.transform(x) if self.svd_ is not None else x.toarray()  # type: ignore[attr-defined]


# --- data -------------------------------------------------------------------------------


def _usable_columns(aligned: pd.DataFrame, columns: ColumnsConfig) -> dict[str, list[str]]:
    """Declared columns, minus text columns without a word in the train rows (TF-IDF has no vocabulary).

    Text is every raw-text modality's columns (tasks/modalities): whatever reads as words.
    """
    texts = raw_text_columns(columns)
    absent = [c for c in [*columns.categorical, *columns.numeric, *texts] if c not in aligned]
    if absent:
        raise DataError(f"aligned table lacks columns {absent}; rerun align", column=absent[0])
    train = aligned[aligned[SPLIT] == "train"]
    word = re.compile(_TOKEN)
    text = [c for c in texts if any(word.search(str(v)) for v in train[c].dropna())]
    roles = {"categorical": list(columns.categorical), "numeric": list(columns.numeric), RAW_TEXT: text}
    if not any(roles.values()):
        raise DataError("the sklearn baseline needs a tabular or text column; only images are declared")
    return roles


def clean_frame(aligned: pd.DataFrame, roles: dict[str, list[str]]) -> pd.DataFrame:
    """One dtype per role: text and categories as plain str (missing spelled out), numerics float."""
    frame = pd.DataFrame(index=aligned.index)
    for column in roles[RAW_TEXT]:
        frame[column] = aligned[column].astype("string").fillna("").astype(str)
    for column in roles["categorical"]:
        frame[column] = aligned[column].astype("string").fillna(_MISSING).astype(str)
    for column in roles["numeric"]:
        frame[column] = aligned[column].astype("float64").replace([np.inf, -np.inf], np.nan)
    return frame


def _predict(model: Pipeline, x: pd.DataFrame, task: str, n_classes: int) -> np.ndarray:
    """Predictions in the form tasks.train.training.predict gives: P(1), (N, C) probabilities or values.

    A class missing from the train rows gets probability 0, so the columns still line up with
    the fused model's classes.
    """
    if task == "regression":
        return model.predict(x).astype(np.float64)
    proba = model.predict_proba(x)
    full = np.zeros((len(x), n_classes))
    full[:, model.classes_.astype(int)] = proba
    return full[:, 1] if task == "binary" else full
