"""Assemble the in-memory FeatureSet from the aligned table and the per-modality feature files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.data.align import ID, SPLIT, TARGET
from tasks.data.labels import from_canonical
from tasks.errors import DataError
from tasks.features.feature_store import read_blocks, read_metadata
from tasks.features.mapped import mapped_blocks
from tasks.modalities import modality_names
from tasks.paths import Layout
from tasks.train.dataset import FeatureSet


def encode_target(
    values: pd.Series, task: str, classes: tuple[str, ...] | None = None, positive: str | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Targets as numbers: class indices for classification, floats for regression, and for
    multilabel an (N, C) float32 0/1 matrix over the labels (`classes`).

    Classes are sorted (numerically when they all look like numbers, so '2' < '10'), which
    makes the positive class of a 0/1 or false/true target the second one, as users expect.
    A binary `positive` class (`data.positive_class`) is put second whatever the sort says.
    """
    if task == "regression":
        return values.astype("float64").to_numpy(dtype=np.float32), ()
    if task == "multilabel":
        return _encode_label_sets(values, classes)
    labels = values.astype(str)
    if classes is None:
        classes = _sorted_classes(labels.unique().tolist())
        if positive is not None and task == "binary":
            classes = _positive_second(classes, positive)
    index = {c: i for i, c in enumerate(classes)}
    unknown = ~labels.isin(index)
    if unknown.any():
        unseen = sorted(set(labels[unknown]))[:5]
        raise DataError(f"target has classes unseen in training: {unseen}", column=TARGET)
    codes = labels.map(index).to_numpy(dtype=np.int64)
    return (codes.astype(np.float32) if task == "binary" else codes), classes


def _positive_second(classes: tuple[str, ...], positive: str) -> tuple[str, ...]:
    """(negative, positive); refuses a positive class the target never takes."""
    if positive not in classes:
        raise DataError(
            f"data.positive_class {positive!r} is not a value of the target (its classes: {list(classes)})",
            column=TARGET,
        )
    return tuple(c for c in classes if c != positive) + (positive,)


def _sorted_classes(distinct: list[str]) -> tuple[str, ...]:
    try:
        return tuple(sorted(distinct, key=float))
    except ValueError:
        return tuple(sorted(distinct))


def _encode_label_sets(
    values: pd.Series, classes: tuple[str, ...] | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Aligned JSON label lists -> (N, C) indicators; rows with no labels are all zeros."""
    rows = [from_canonical(str(v)) for v in values]
    if classes is None:
        classes = _sorted_classes(sorted({label for row in rows for label in row}))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({label for row in rows for label in row if label not in index})
    if unknown:
        raise DataError(f"target has labels unseen in training: {unknown[:5]}", column=TARGET)
    matrix = np.zeros((len(rows), len(classes)), dtype=np.float32)
    for i, row in enumerate(rows):
        matrix[i, [index[label] for label in row]] = 1.0
    return matrix, classes


def feature_metadata(layout: Layout) -> dict[str, dict]:
    """Metadata each feature file carries (encoder fingerprints, tabular state), by modality."""
    return {
        modality: read_metadata(layout.feature_file(modality))  # a million rows' blocks are not read for it
        for modality in modality_names()
        if layout.feature_file(modality).exists()
    }


def load_feature_set(
    layout: Layout,
    task: str,
    classes: tuple[str, ...] | None = None,
    positive: str | None = None,
    mapped: Path | None = None,
) -> FeatureSet:
    """Join targets, splits and every modality's blocks on row_id.

    With `mapped` (a directory, `<cache.dir>/mapped`), blocks are memory-mapped copies of the
    feature files (tasks/features/mapped.py) rather than arrays in memory: what lets train and
    evaluate run on tables larger than RAM. Both give the same values.
    """
    aligned = pd.read_parquet(layout.aligned, columns=[ID, SPLIT, TARGET])
    ids = aligned[ID].astype(str).to_numpy(dtype=object)
    position = pd.Index(ids)
    inputs: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for modality in modality_names():
        path = layout.feature_file(modality)
        if not path.exists():
            continue
        file_ids, blocks, masks, _ = mapped_blocks(path, mapped) if mapped is not None else read_blocks(path)
        in_order = len(file_ids) == len(ids) and bool(np.array_equal(file_ids, ids))
        order = np.arange(len(ids)) if in_order else position.get_indexer(pd.Index(file_ids))
        if (order < 0).any() or len(file_ids) != len(ids):
            raise DataError("feature rows do not match the aligned table; rerun extract", file=str(path))
        for name, block in blocks.items():
            if block.shape[1] == 0:
                continue
            if in_order:  # extract writes rows in the aligned order: no copy, mapped stays mapped
                # (Arrow's zero-copy arrays are read-only; callers may shuffle a block in place)
                writable = block if block.flags.writeable else block.copy()
                inputs[name], present[name] = writable, np.array(masks[name], dtype=bool)
                continue
            dense = np.empty(block.shape, dtype=block.dtype)
            dense[order] = block
            mask = np.empty_like(masks[name])
            mask[order] = masks[name]
            inputs[name], present[name] = dense, mask
    target, classes = encode_target(aligned[TARGET], task, classes, positive)
    return FeatureSet(
        ids=ids,
        split=aligned[SPLIT].astype(str).to_numpy(),
        target=target,
        inputs=inputs,
        present=present,
        classes=classes,
    )


def rows_in_order(aligned: pd.DataFrame, ids: np.ndarray) -> pd.DataFrame:
    """The aligned rows with these ids, in this order: what members reading raw columns get."""
    return aligned.set_index(ID).loc[ids].reset_index()


def read_rows(aligned_path: str | Path, ids: np.ndarray) -> pd.DataFrame:
    """rows_in_order from the aligned Parquet file (for tasks that run away from the flow)."""
    return rows_in_order(pd.read_parquet(aligned_path), ids)
