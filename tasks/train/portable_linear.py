"""The scikit-learn linear baseline as numbers, not pickle, so a bundle can carry and serve it.

A pickled pipeline executes code when loaded, and its bytes depend on the scikit-learn
version. What the fitted TF-IDF + one-hot + scaled-numerics + linear model actually needs to
predict is a few arrays and a vocabulary, so they are stored as safetensors plus JSON and the
transform is re-done here in NumPy. `tests/tasks/train/test_portable_linear.py` holds it to the
fitted pipeline's own predictions.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays
from sklearn.pipeline import Pipeline

from tasks.errors import BundleError
from tasks.train.bundle import meta_digest

WEIGHTS = "linear.safetensors"
META = "linear.json"
FORMAT_VERSION = 2  # 2: text and categorical as ordered [column, values] pairs
RAW_TEXT = "raw_text"  # the role of columns read as words (TF-IDF), whichever modality holds them


@dataclass(frozen=True)
class PortableLinear:
    """Everything the linear baseline predicts from (see `export_linear`)."""

    task: str  # binary | multiclass | regression
    n_classes: int  # output columns: 2 for binary, C for multiclass, 1 for regression
    model_classes: list[int]  # class indices the linear model saw in train (its coef rows)
    token_pattern: str
    text: dict[str, list[str]]  # text column -> vocabulary in feature order
    categorical: dict[str, list[str]]  # column -> categories in one-hot order
    numeric: list[str]  # numeric columns, in the order the imputer saw them
    numeric_kept: list[bool]  # the imputer drops columns without a train value
    indicator_of: list[int]  # numeric positions that got a missing-value indicator column
    arrays: dict[str, np.ndarray]  # idf.<col>, median, scaler_mean, scaler_scale, coef, intercept

    def roles(self) -> dict[str, list[str]]:
        """The columns it reads, by role, as `sklearn_baseline.clean_frame` takes them."""
        return {
            RAW_TEXT: list(self.text),
            "categorical": list(self.categorical),
            "numeric": list(self.numeric),
        }

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Same form as the pipeline's baseline predictions: P(1), (N, C) probabilities or values.

        `frame` holds the cleaned columns (`sklearn_baseline.clean_frame`).
        """
        features = self.features(frame)  # (N, F) sparse
        coef = self.arrays["coef"]  # (K, F)
        scores = np.asarray(features @ coef.T) + self.arrays["intercept"]  # (N, K)
        if self.task == "regression":
            return scores[:, 0].astype(np.float64)
        if scores.shape[1] == 1:  # a two-class logistic model has one row of coefficients
            p1 = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            proba = np.stack([1.0 - p1, p1], axis=1)
        else:
            shifted = scores - scores.max(axis=1, keepdims=True)
            exp = np.exp(shifted)
            proba = exp / exp.sum(axis=1, keepdims=True)
        full = np.zeros((len(frame), self.n_classes))
        full[:, self.model_classes] = proba
        return full[:, 1] if self.task == "binary" else full

    def features(self, frame: pd.DataFrame) -> sp.csr_matrix:
        """The ColumnTransformer's output: TF-IDF per text column, one-hot, scaled numerics."""
        parts = [self._tfidf(frame[column], column) for column in self.text]
        if self.categorical:
            parts.append(self._one_hot(frame))
        if self.numeric:
            parts.append(sp.csr_matrix(self._numeric(frame)))
        return sp.hstack(parts, format="csr") if parts else sp.csr_matrix((len(frame), 0))

    @cached_property
    def _term_positions(self) -> dict[str, dict[str, int]]:
        """Each text column's term -> feature position. Built once per loaded model: remade per
        call it cost a served one-row request more than the rest of this member (py-spy)."""
        return {column: {term: i for i, term in enumerate(terms)} for column, terms in self.text.items()}

    @cached_property
    def _category_positions(self) -> dict[str, pd.Index]:
        return {column: pd.Index(categories) for column, categories in self.categorical.items()}

    def _tfidf(self, texts: pd.Series, column: str) -> sp.csr_matrix:
        """Lower-cased word 1- and 2-grams, sublinear tf, times idf, each row L2-normalised.

        Weighed and normalised per row before one matrix is built: scipy's sparse products
        cost a fixed ~0.1 ms each, most of a served one-row request's time in this member."""
        index = self._term_positions[column]
        idf = self.arrays[f"idf.{column}"]
        token = re.compile(self.token_pattern)
        rows, cols, values = [], [], []
        for row, text in enumerate(texts.astype(str)):
            words = token.findall(text.lower())
            grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
            counts: dict[int, int] = {}
            for gram in grams:
                position = index.get(gram)
                if position is not None:
                    counts[position] = counts.get(position, 0) + 1
            weighed = {p: (1.0 + math.log(count)) * float(idf[p]) for p, count in counts.items()}
            norm = math.sqrt(math.fsum(value * value for value in weighed.values())) or 1.0
            for position, value in weighed.items():
                rows.append(row)
                cols.append(position)
                values.append(value / norm)
        return sp.csr_matrix((values, (rows, cols)), shape=(len(texts), len(index)), dtype=np.float64)

    def _one_hot(self, frame: pd.DataFrame) -> sp.csr_matrix:
        """One column per training category; an unseen category is all zeros (handle_unknown=ignore)."""
        blocks = []
        for column, categories in self.categorical.items():
            position = self._category_positions[column].get_indexer(frame[column].astype(str))
            seen = position >= 0
            block = sp.csr_matrix(
                (np.ones(int(seen.sum())), (np.flatnonzero(seen), position[seen])),
                shape=(len(frame), len(categories)),
            )
            blocks.append(block)
        return sp.hstack(blocks, format="csr")

    def _numeric(self, frame: pd.DataFrame) -> np.ndarray:
        """Median-imputed values plus missing indicators, standardised with the train statistics."""
        values = frame[self.numeric].to_numpy(dtype=np.float64)  # (N, numeric)
        missing = np.isnan(values)
        imputed = np.where(missing, self.arrays["median"], values)[
            :, np.asarray(self.numeric_kept, dtype=bool)
        ]
        indicators = missing[:, self.indicator_of].astype(np.float64)
        dense = np.hstack([imputed, indicators])
        return (dense - self.arrays["scaler_mean"]) / self.arrays["scaler_scale"]


def export_linear(pipeline: Pipeline, task: str, n_classes: int, token_pattern: str) -> PortableLinear:
    """Read the fitted arrays out of the baseline's linear pipeline (see sklearn_baseline)."""
    transformer, model = pipeline.steps[0][1], pipeline.steps[-1][1]
    text: dict[str, list[str]] = {}
    categorical: dict[str, list[str]] = {}
    numeric: list[str] = []
    arrays: dict[str, np.ndarray] = {}
    kept: list[bool] = []
    indicator_of: list[int] = []
    for name, fitted, columns in transformer.transformers_:
        if name.startswith("text_"):
            vocabulary = fitted.vocabulary_
            terms = [""] * len(vocabulary)
            for term, position in vocabulary.items():
                terms[position] = term
            text[columns] = terms
            arrays[f"idf.{columns}"] = fitted.idf_.astype(np.float64)
        elif name == "categorical":
            categorical = {
                c: [str(v) for v in cats] for c, cats in zip(columns, fitted.categories_, strict=True)
            }
        elif name == "numeric":
            imputer, scaler = fitted.steps[0][1], fitted.steps[1][1]
            numeric = list(columns)
            arrays["median"] = imputer.statistics_.astype(np.float64)
            kept = [bool(np.isfinite(v)) for v in imputer.statistics_]
            indicator_of = [int(i) for i in imputer.indicator_.features_] if imputer.indicator_ else []
            arrays["scaler_mean"] = scaler.mean_.astype(np.float64)
            arrays["scaler_scale"] = scaler.scale_.astype(np.float64)
    coef = np.atleast_2d(model.coef_).astype(np.float64)
    arrays["coef"] = coef
    arrays["intercept"] = np.atleast_1d(np.asarray(model.intercept_, dtype=np.float64))
    classes = [] if task == "regression" else [int(c) for c in model.classes_]
    return PortableLinear(
        task=task,
        n_classes=n_classes if task != "regression" else 1,
        model_classes=classes,
        token_pattern=token_pattern,
        text=text,
        categorical=categorical,
        numeric=numeric,
        numeric_kept=kept,
        indicator_of=indicator_of,
        arrays=arrays,
    )


# The column -> values maps (TF-IDF vocabularies, categories), stored as ordered pairs.
_PAIRED = tuple(f.name for f in fields(PortableLinear) if f.type == "dict[str, list[str]]")


def write_linear(directory: Path, linear: PortableLinear) -> None:
    """linear.safetensors + linear.json (with the digest of both) into an existing directory."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = save_arrays({k: np.ascontiguousarray(v) for k, v in linear.arrays.items()})
    meta = {f.name: getattr(linear, f.name) for f in fields(linear) if f.name != "arrays"}
    # Column order is feature order: as [column, values] pairs it survives sorted JSON keys.
    for key in _PAIRED:
        meta[key] = [[column, values] for column, values in meta[key].items()]
    meta["format_version"] = FORMAT_VERSION
    meta["digest"] = {"weights": hashlib.sha256(weights).hexdigest(), "meta": meta_digest(meta)}
    (directory / WEIGHTS).write_bytes(weights)
    (directory / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def read_linear(directory: Path) -> PortableLinear:
    """The stored model, refused (BundleError naming the file) unless both parts are intact."""
    meta_path, weights_path = directory / META, directory / WEIGHTS
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        weights = weights_path.read_bytes()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{directory}: unreadable linear model ({err})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: unreadable linear model (not a JSON object)")
    digest = meta.pop("digest", None)
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{meta_path}: linear model format {meta.get('format_version')!r} is not supported")
    if (
        not isinstance(digest, dict)
        or digest.get("weights") != hashlib.sha256(weights).hexdigest()
        or digest.get("meta") != meta_digest(meta)
    ):
        raise BundleError(f"{directory}: the linear model changed after it was written (digest mismatch)")
    meta.pop("format_version")
    try:
        for key in _PAIRED:
            meta[key] = {column: values for column, values in meta[key]}
        return PortableLinear(**meta, arrays=dict(load_arrays(weights)))
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{meta_path}: unreadable linear model ({err})") from None
