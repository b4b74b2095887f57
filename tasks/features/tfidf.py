"""Fitting `encoders.text.model: tfidf` on the train rows: TF-IDF of word 1-2 grams, then a truncated SVD.

Only train rows are read, so nothing about val or test texts (not even which words exist)
reaches the features a model is selected and scored on. The fit sees each distinct text once,
in sorted order (min_df counts distinct texts, and the row order of the table cannot change
the result). scikit-learn fits; modelzoo's TfidfSvdEncoder holds the result as tensors and
reproduces scikit-learn's transform, so nothing here is pickled or needed at prediction time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd
import torch

from modelzoo.encoders.tfidf import FORMAT_VERSION, TfidfSettings, TfidfSvdEncoder
from tasks.cache_keys import text_digest
from tasks.contents import contents_by_value
from tasks.errors import DataError
from tasks.modalities.text import TfidfConfig
from tasks.schema import SPLIT

log = logging.getLogger(__name__)

# Libraries whose upgrades may change a fit from the very same texts.
_FITTING_LIBRARIES = ("scikit-learn", "numpy", "scipy")


def train_texts(aligned: pd.DataFrame, columns: list[str]) -> list[str]:
    """The distinct non-empty texts of `columns` on train rows only, sorted."""
    train = aligned[aligned[SPLIT] == "train"]
    return sorted(contents_by_value(train, columns, "fit", text_digest).sources)


def fit_key(texts: list[str], config: TfidfConfig) -> str:
    """A digest of everything a fit depends on: the texts, the settings and the libraries' versions."""
    digest = hashlib.sha256()
    header = {
        "format_version": FORMAT_VERSION,
        "settings": TfidfSettings().to_json(),
        "config": config.model_dump(mode="json"),
        "versions": {package: _version(package) for package in _FITTING_LIBRARIES},
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))  # length-prefixed: no two lists hash alike
        digest.update(encoded)
    return digest.hexdigest()[:32]


def fit_tfidf(texts: list[str], config: TfidfConfig) -> TfidfSvdEncoder:
    """TfidfVectorizer + TruncatedSVD on `texts` (the train rows' distinct texts), as a torch encoder.

    `dim` is clipped to what the data allows (fewer than the vocabulary's terms, at most the
    number of texts); the state records both numbers and a warning says so.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    settings = TfidfSettings()
    vectorizer = TfidfVectorizer(
        ngram_range=settings.ngram_range,
        lowercase=settings.lowercase,
        token_pattern=settings.token_pattern,
        sublinear_tf=settings.sublinear_tf,
        norm=settings.norm,
        min_df=config.min_df,
        max_features=config.max_features,
        dtype=np.float32,
    )
    try:
        matrix = vectorizer.fit_transform(texts)  # (texts, V) sparse
    except ValueError as err:  # an empty vocabulary, or min_df pruned every term
        raise DataError(
            f"encoders.text.tfidf: no vocabulary from {len(texts)} distinct train texts "
            f"with min_df {config.min_df} ({err})"
        ) from None
    terms = [str(term) for term in vectorizer.get_feature_names_out()]  # column order
    dim = min(config.dim, len(terms) - 1, len(texts))
    if dim < 1:
        raise DataError(
            f"encoders.text.tfidf: the train texts give {len(terms)} term(s) with min_df {config.min_df}; "
            "the SVD needs at least 2 (lower min_df, or add text)"
        )
    if dim < config.dim:
        log.warning(
            "tfidf: dim %d clipped to %d (%d terms, %d distinct train texts)",
            config.dim, dim, len(terms), len(texts),
        )  # fmt: skip
    svd = TruncatedSVD(n_components=dim, algorithm="randomized", random_state=config.seed)
    svd.fit(matrix)
    notes = {
        "dim_asked": config.dim,
        "min_df": config.min_df,
        "max_features": config.max_features,
        "seed": config.seed,
        "train_texts": len(texts),
        "versions": {package: _version(package) for package in _FITTING_LIBRARIES},
    }
    return TfidfSvdEncoder(
        terms,
        torch.from_numpy(np.asarray(vectorizer.idf_, dtype=np.float32)),
        torch.from_numpy(np.asarray(svd.components_, dtype=np.float32)),
        settings,
        notes,
    )


def fit_plan(
    encoder: Any, aligned: pd.DataFrame, columns: list[str]
) -> tuple[str, Callable[[], dict[str, bytes]]]:
    """The fit's cache key, and a call that fits and returns the state files (tasks/features/fitted.py).

    `encoder` is the raw-text modality's `encoders.<name>` section; its `tfidf` key configures the fit.
    """
    texts = train_texts(aligned, columns)
    config: TfidfConfig = encoder.tfidf
    return fit_key(texts, config), lambda: fit_tfidf(texts, config).to_files()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
