"""Inputs of Wide & Deep's wide part: hashed ids of categorical values, crosses and text n-grams.

The wide part is a linear model over sparse indicator features. Rather than materialise a
multi-hot vector of 2**15 columns per row, each row stores the ids of its active features
(1..buckets; 0 pads), and the head sums one learned weight per id. Two blocks are written,
named so that the part before the dot is their modality:

    tabular.__wide__  one id per categorical column (value or <missing>), per numeric column
                      (quantile bucket or <missing>) and per declared cross (`fusion.wide.crosses`,
                      e.g. category x price bucket); every row has all of them
    text.__wide__     the distinct word 1..n-grams of the text columns, at most `max_ngrams`
                      per row (the first ones in reading order); absent when all text is absent

Ids come from CRC-32 of "column=value" strings, so they are stable across runs, machines
and Python versions (Python's own hash() is salted per process). State fitted on the train
rows (numeric bucket edges, the text width) is plain JSON, like the tabular state.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from modelzoo.heads.blocks import WIDE_SUFFIX
from modelzoo.heads.wide_deep import WideOptions
from tasks.config import ColumnsConfig, FusionConfig, Params
from tasks.errors import ConfigError, closest_names
from tasks.modalities import raw_text_columns, raw_text_role
from tasks.schema import PRESENT, SPLIT

TABULAR_WIDE = "tabular" + WIDE_SUFFIX
TEXT_WIDE = raw_text_role() + WIDE_SUFFIX  # the n-grams of every raw-text column (text's)
_MISSING = "<missing>"
_WORD = re.compile(r"\w+")
CHUNK_ROWS = 65_536  # rows whose string keys exist at once

Blocks = dict[str, np.ndarray]  # block name -> (N, L) ids, or -> (N,) presence


@dataclass(frozen=True)
class WideState:
    """Everything needed to build the same wide blocks for new rows (e.g. batch prediction)."""

    categorical: list[str]
    numeric_edges: dict[str, list[float]]
    crosses: list[list[str]]
    text: list[str]
    buckets: int
    ngrams: int
    text_slots: int  # width of the text block, fixed at fit time so the head's input width is too

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> WideState:
        return cls(**data)


def wide_options(fusion: FusionConfig) -> WideOptions:
    """`fusion.wide` validated (it is wide_deep's option, but the blocks are built for every head)."""
    try:
        return WideOptions.model_validate(fusion.options().get("wide", {}), strict=True)
    except ValueError as err:
        raise ConfigError(f"fusion.wide: {err}") from None


def wide_blocks(aligned: pd.DataFrame, params: Params) -> tuple[Blocks, Blocks, dict]:
    """(blocks, presence, state JSON) for the aligned table; the extract stage writes them."""
    state = fit_wide(aligned[aligned[SPLIT] == "train"], params.data.columns, wide_options(params.fusion))
    blocks, present = transform_wide(aligned, state)
    return blocks, present, state.to_json()


def fit_wide(train: pd.DataFrame, columns: ColumnsConfig, options: WideOptions) -> WideState:
    """Numeric bucket edges and the text width, from the train rows only."""
    _check_columns(columns, options)
    edges = {column: _quantile_edges(train[column], options.numeric_bins) for column in columns.numeric}
    text = raw_text_columns(columns) if options.ngrams > 0 else []
    longest = max(
        (len(row) for chunk in _row_chunks(train) for row in _text_keys(chunk, text, options.ngrams, None)),
        default=0,
    )
    return WideState(
        categorical=list(columns.categorical),
        numeric_edges=edges,
        crosses=[list(cross) for cross in options.crosses],
        text=text,
        buckets=options.buckets,
        ngrams=options.ngrams,
        text_slots=max(1, min(options.max_ngrams, longest)),
    )


def transform_wide(frame: pd.DataFrame, state: WideState) -> tuple[Blocks, Blocks]:
    """Id blocks (N, L) float32 and presence masks (N,) for any rows, with a fitted state.

    Built CHUNK_ROWS rows at a time: the keys are Python strings, a few hundred bytes per row,
    which for a million rows would cost gigabytes at once for blocks of a few megabytes.
    """
    parts = [_transform_rows(chunk, state) for chunk in _row_chunks(frame)]
    blocks = {name: np.concatenate([part[0][name] for part in parts]) for name in parts[0][0]}
    present = {name: np.concatenate([part[1][name] for part in parts]) for name in parts[0][1]}
    return blocks, present


def _row_chunks(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """The frame in consecutive slices of CHUNK_ROWS rows (one empty slice for an empty frame)."""
    return [frame.iloc[start : start + CHUNK_ROWS] for start in range(0, max(len(frame), 1), CHUNK_ROWS)]


def _transform_rows(frame: pd.DataFrame, state: WideState) -> tuple[Blocks, Blocks]:
    blocks: Blocks = {}
    present: Blocks = {}
    n_rows = len(frame)
    tokens = _tabular_tokens(frame, state)
    if tokens:
        blocks[TABULAR_WIDE] = _tabular_ids(tokens, state, n_rows)
        present[TABULAR_WIDE] = np.ones(n_rows, dtype=bool)
    if state.text:
        rows = _text_keys(frame, state.text, state.ngrams, state.text_slots)
        block = np.zeros((n_rows, state.text_slots), dtype=np.float32)
        for i, keys in enumerate(rows):
            ids = sorted(_hash(key, state.buckets) for key in keys)
            block[i, : len(ids)] = ids
        blocks[TEXT_WIDE] = block
        present[TEXT_WIDE] = np.any([frame[PRESENT + c].to_numpy(dtype=bool) for c in state.text], axis=0)
    return blocks, present


# --- tabular ------------------------------------------------------------------------------


def _tabular_tokens(frame: pd.DataFrame, state: WideState) -> dict[str, list[str]]:
    """column -> one token per row: the category, the numeric bucket, or <missing>."""
    tokens: dict[str, list[str]] = {}
    for column in state.categorical:
        present = frame[PRESENT + column].to_numpy(dtype=bool)
        values = frame[column].astype("string").fillna("").str.strip().tolist()
        tokens[column] = [v if ok else _MISSING for v, ok in zip(values, present, strict=True)]
    for column, edges in state.numeric_edges.items():
        values = frame[column].astype("float64").replace([np.inf, -np.inf], np.nan).to_numpy()
        buckets = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
        tokens[column] = [_MISSING if np.isnan(v) else f"q{b}" for v, b in zip(values, buckets, strict=True)]
    return tokens


def _tabular_ids(tokens: dict[str, list[str]], state: WideState, n_rows: int) -> np.ndarray:
    """(N, columns + crosses) ids: one per column, then one per cross."""
    features = [[f"{column}={token}" for token in values] for column, values in tokens.items()]
    for cross in state.crosses:
        parts = [[f"{column}={token}" for token in tokens[column]] for column in cross]
        features.append(["&".join(row) for row in zip(*parts, strict=True)])
    block = np.zeros((n_rows, len(features)), dtype=np.float32)
    for j, keys in enumerate(features):
        block[:, j] = [_hash(key, state.buckets) for key in keys]
    return block


def _quantile_edges(values: pd.Series, bins: int) -> list[float]:
    """Inner quantile edges of the finite train values; ties collapse, so fewer bins is fine."""
    finite = values.astype("float64").replace([np.inf, -np.inf], np.nan).dropna().to_numpy()
    if finite.size == 0:
        return []
    inner = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
    return sorted({float(edge) for edge in inner})


# --- text ---------------------------------------------------------------------------------


def _text_keys(frame: pd.DataFrame, columns: list[str], ngrams: int, limit: int | None) -> list[list[str]]:
    """Per row: distinct "column:n-gram" keys in reading order, at most `limit` of them."""
    rows: list[list[str]] = [[] for _ in range(len(frame))]
    for column in columns:
        present = frame[PRESENT + column].to_numpy(dtype=bool)
        texts = frame[column].astype("string").fillna("").tolist()
        for i, (text, ok) in enumerate(zip(texts, present, strict=True)):
            if ok:
                rows[i].extend(_ngrams(column, text, ngrams))
    unique = [list(dict.fromkeys(keys)) for keys in rows]
    return [keys[:limit] for keys in unique] if limit is not None else unique


def _ngrams(column: str, text: str, n_max: int) -> list[str]:
    words = _WORD.findall(text.lower())
    return [
        f"{column}:{' '.join(words[start : start + n])}"
        for start in range(len(words))
        for n in range(1, n_max + 1)
        if start + n <= len(words)
    ]


# --- shared -------------------------------------------------------------------------------


def _hash(key: str, buckets: int) -> int:
    """Stable id in 1..buckets (0 is padding)."""
    return zlib.crc32(key.encode("utf-8")) % buckets + 1


def _check_columns(columns: ColumnsConfig, options: WideOptions) -> None:
    tabular = [*columns.categorical, *columns.numeric]
    for index, cross in enumerate(options.crosses):
        for column in cross:
            if column not in tabular:
                raise ConfigError(
                    f"fusion.wide.crosses[{index}]: {column!r} is not a categorical or numeric column"
                    f"{closest_names(column, tabular)}"
                )
    role = raw_text_role()
    if any(f"{role}.{column}" == TEXT_WIDE for column in getattr(columns, role)):
        raise ConfigError(f"{role} column name {WIDE_SUFFIX[1:]!r} is reserved for the wide block; rename it")
