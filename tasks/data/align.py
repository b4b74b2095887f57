"""Align: join the sources on the id, let each modality inspect its cells, add presence masks, split.

Schema of `data/aligned/aligned.parquet` (one row per item, sorted by `row_id`):
    row_id            string   the id column, as text
    split             string   "train" | "val" | "test"
    target            string (classification; multilabel: a JSON array of sorted labels,
                      see tasks/data/labels.py) or float64 (regression)
    <feature column>  as declared: numeric as float64, every other role as string; file
                      columns (image, audio) hold paths relative to data.<modality>_root,
                      null when unusable (tasks/modalities/files.py)
    present__<col>    bool     False where the row has no usable value for that column
    sha256__<file>    string   SHA-256 of the file's bytes (null when absent): file edits
                               change the aligned table, so DVC and caches see them
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from tasks.align_report import AlignReport
from tasks.config import DataConfig
from tasks.data.ingest import BAD_VALUES, TARGET_TYPE
from tasks.data.labels import canonical, check_label_sets, refuse_case_variants
from tasks.data.outliers import huge_masks
from tasks.data.sources import REPLACED_BYTES
from tasks.errors import ConfigError, DataError, preview
from tasks.modalities import embedded, raw_text_columns
from tasks.schema import DIGEST, ID, PRESENT, SPLIT, SPLITS, TARGET

__all__ = ["DIGEST", "ID", "PRESENT", "SPLIT", "SPLITS", "TARGET", "AlignReport", "align"]
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
_MIN_ROWS_PER_CLASS = 3

log = logging.getLogger(__name__)


def recorded_target_type(summary: Path) -> str | None:
    """The target's source type from align's summary.json; None for a summary written before it was."""
    try:
        return json.loads(summary.read_text()).get("target_type")
    except FileNotFoundError:
        return None


def align(
    data: DataConfig, sources: list[tuple[str, pd.DataFrame]], probe_memo: Path | None = None
) -> tuple[pd.DataFrame, AlignReport]:
    """The aligned table and its report, from the typed snapshots written by ingest.

    `probe_memo`: a folder where the digests of the files probed are kept, so the next run
    reads only files that are new or changed (tasks/modalities/probe_memo.py); None reads all.

    Ends with `check_runnable`: a table that would fail in extract, train or evaluate (an
    empty split, a column with no usable value, a constant target) fails here, in seconds.
    """
    report = AlignReport()
    for _, frame in sources:
        report.target_type = report.target_type or frame.attrs.get(TARGET_TYPE)
        for key, counts in ((BAD_VALUES, report.bad_values), (REPLACED_BYTES, report.replaced_bytes)):
            for column, count in frame.attrs.get(key, {}).items():
                counts[column] = counts.get(column, 0) + int(count)
    for plugin in embedded():
        root = plugin.root(data)
        if plugin.columns(data) and root is not None and not root.is_dir():
            raise ConfigError(f"data.{plugin.name}_root: {str(root)!r} is not a directory")
    table = _join(data, sources, report).copy(deep=False)
    table.attrs = {}  # pandas deep-copies attrs into every column taken out: 0.1 ms a column
    _check_target(data, table)
    target = table[data.target].map(canonical) if data.task == "multilabel" else table[data.target]
    columns = data.columns.all()
    # Every frame here is built from all its columns at once: adding them one by one copies
    # the column index each time, quadratic in columns (10,000 took longer than 10 minutes).
    key = pd.DataFrame({ID: table[data.id].astype("string"), TARGET: target})
    aligned = pd.concat([key, table[columns]], axis=1)
    for plugin in embedded():
        plugin.inspect_cells(aligned, aligned[ID], data, None, report, memo_dir=probe_memo)
    present = presence_masks(aligned, columns)  # (rows, columns)
    report.present = dict(zip(columns, present.sum(axis=0).tolist(), strict=True))
    masks = pd.DataFrame(present, columns=[PRESENT + c for c in columns], index=aligned.index)
    digests = [c for c in aligned.columns if c.startswith(DIGEST)]
    # in the documented order
    aligned = pd.concat([aligned[[ID, TARGET, *columns]], masks, aligned[digests]], axis=1)
    aligned = aligned.sort_values(ID, kind="stable").reset_index(drop=True)
    split_source = table.set_index(data.id)[data.split.column] if data.split.column else None
    aligned.insert(1, SPLIT, _split(data, aligned, split_source, _split_keys(data, table, aligned)))
    report.rows = len(aligned)
    report.rows_per_split = {s: int((aligned[SPLIT] == s).sum()) for s in SPLITS}
    _check_leaks(data, aligned, report)
    _count_outliers(data, aligned, report)
    check_runnable(data, aligned, report)
    return aligned, report


def check_runnable(data: DataConfig, aligned: pd.DataFrame, report: AlignReport) -> None:
    """Prove that every later stage can run on this table, or say which column stops it.

    Each check stands for a failure that used to surface only at train or evaluate, after a
    long extraction: an empty split (the baselines cannot fit or score), a declared column
    with no usable value in train (nothing to scale, an image-only model of nothing), a
    class that train never sees, and a regression target that never varies.
    """
    where = {"data.split.column": data.split.column} if data.split.column else {}
    for split in SPLITS:
        if report.rows_per_split.get(split, 0) == 0:
            fix = (
                f"give some rows '{split}' in column {data.split.column!r}"
                if data.split.column
                else "use more rows or larger data.split.fractions"
            )
            raise DataError(
                f"the {split} split has no rows ({report.rows_per_split}); {fix}",
                column=where.get("data.split.column"),
            )
    train = (aligned[SPLIT] == "train").to_numpy()
    columns = data.columns.all()
    usable = aligned[[PRESENT + c for c in columns]].to_numpy(dtype=bool)[train].sum(axis=0)  # one pass
    for column, count in zip(columns, usable, strict=True):
        if count == 0:
            raise DataError(
                f"no train row has a usable value in this {data.columns.role_of(column)} column "
                f"({_unusable_counts(column, report)}); fix the data or remove it from data.columns",
                column=column,
            )
    _check_target_in_train(data, aligned, train)


def _unusable_counts(column: str, report: AlignReport) -> str:
    counts = {
        "rows": report.rows,
        "present": report.present.get(column, 0),
        "bad values": report.bad_values.get(column, 0),
        "files missing": report.files_missing.get(column, 0),
        "paths refused": report.paths_refused.get(column, 0),
        "files undecodable": report.files_undecodable.get(column, 0),
    }
    return ", ".join(f"{name} {count}" for name, count in counts.items() if count or name == "rows")


def _check_target_in_train(data: DataConfig, aligned: pd.DataFrame, train: np.ndarray) -> None:
    target = aligned[TARGET]
    if data.task == "regression":
        values = target[train].to_numpy(dtype=np.float64)
        if np.nanstd(values) == 0:
            raise DataError(
                f"the regression target is {values[0]:g} in every train row: there is nothing to learn",
                column=data.target,
            )
        return
    if data.task == "multilabel":
        return
    missing = sorted(set(target) - set(target[train]))
    if missing:
        raise DataError(
            f"classes {missing} have no train rows, so the model could never predict them; "
            "move some of their rows to train",
            column=data.target,
            rows=list(aligned.loc[target.isin(missing).to_numpy(), ID]),
        )
    if data.task == "binary":
        classes = sorted(set(target.astype(str)))
        if data.positive_class is not None and data.positive_class not in classes:
            raise DataError(
                f"data.positive_class {data.positive_class!r} is not a value of the target "
                f"(its classes: {classes}); write one of them",
                column=data.target,
            )
        for split in ("val", "test"):
            seen = set(target[(aligned[SPLIT] == split).to_numpy()])
            if len(seen) < 2:
                raise DataError(
                    f"the {split} split holds only class {sorted(seen)}: AUC and early stopping need "
                    "both classes there",
                    column=data.target,
                )


def check_ids(ids: pd.Series, path: str, column: str) -> None:
    """Every row needs one id of its own: joins, splits and predictions are keyed by it."""
    missing = ids.isna() | ids.str.strip().eq("")
    if missing.any():
        rows = [int(i) + 1 for i in ids.index[missing]]
        raise DataError(f"{int(missing.sum())} rows have no id", file=path, column=column, rows=rows)
    duplicated = ids.duplicated(keep=False)
    if duplicated.any():
        dup_ids = sorted(set(ids[duplicated]))
        raise DataError(
            f"{len(dup_ids)} ids occur more than once ({int(duplicated.sum())} rows)",
            file=path,
            column=column,
            rows=dup_ids,
        )


def _join(data: DataConfig, sources: list[tuple[str, pd.DataFrame]], report: AlignReport) -> pd.DataFrame:
    for path, frame in sources:
        check_ids(frame[data.id], path, data.id)
    base_path, table = sources[0]
    seen = {c: base_path for c in table.columns}
    for path, frame in sources[1:]:
        overlap = [c for c in frame.columns if c != data.id and c in seen]
        if overlap:
            raise DataError(
                f"column {overlap[0]!r} is also in {seen[overlap[0]]}; each column must come from one source",
                file=path,
                column=overlap[0],
            )
        unmatched = ~frame[data.id].isin(table[data.id])
        _refuse_mismatched_ids(frame[data.id], table[data.id], unmatched, path, base_path, data.id)
        if unmatched.any():
            report.dropped_unmatched_ids[path] = int(unmatched.sum())
            log.warning("%s: %d ids are not in %s and are ignored", path, int(unmatched.sum()), base_path)
        table = table.merge(frame, on=data.id, how="left", validate="one_to_one")
        seen |= {c: path for c in frame.columns}
    return table


_WHOLE_NUMBER = re.compile(r"^0*(\d+?)(?:\.0*)?$")


def _id_form(value: str) -> str:
    """`0007`, `7` and `7.0` in one form, to tell a formatting mismatch from a real one."""
    text = str(value).strip()
    match = _WHOLE_NUMBER.match(text)
    return match.group(1) if match else text


def _refuse_mismatched_ids(
    ids: pd.Series, base_ids: pd.Series, unmatched: pd.Series, path: str, base_path: str, column: str
) -> None:
    """A source whose ids match none of the first source's, or match only once reformatted.

    Either way its columns would be missing in every row while the run went on with one
    warning; ids written `0007` in one file and `7` in another are the usual cause.
    """
    base_forms = set(base_ids.map(_id_form))
    rescued = unmatched & ids.map(_id_form).isin(base_forms)
    if rescued.any():
        example = ids[rescued].iloc[0]
        partner = base_ids[base_ids.map(_id_form) == _id_form(example)].iloc[0]
        raise DataError(
            f"{int(rescued.sum())} ids match {base_path} only when written alike (e.g. {preview(example)} "
            f"here, {preview(partner)} there); write the ids the same way in both sources",
            file=path,
            column=column,
            rows=list(ids[rescued]),
        )
    if unmatched.all():
        raise DataError(
            f"none of its {len(ids)} ids occur in {base_path} (e.g. {preview(ids.iloc[0])} here, "
            f"{preview(base_ids.iloc[0])} there), so all its columns would be missing",
            file=path,
            column=column,
        )


def _check_target(data: DataConfig, table: pd.DataFrame) -> None:
    target = table[data.target]
    if data.task == "multilabel":  # list-valued: no per-class row minimum, no stratification
        check_label_sets(target, column=data.target)  # an empty cell is a row with no labels
        return
    missing = target.isna()
    if missing.any():
        raise DataError(
            f"{int(missing.sum())} rows have no target",
            column=data.target,
            rows=list(table.loc[missing, data.id]),
        )
    if data.task == "regression":
        return
    refuse_case_variants(target.unique(), column=data.target)
    counts = target.value_counts()
    if data.task == "binary" and len(counts) != 2:
        raise DataError(f"a binary target needs exactly 2 classes, found {len(counts)}", column=data.target)
    rare = counts[counts < _MIN_ROWS_PER_CLASS]
    if len(rare):
        label = rare.index[0]
        raise DataError(
            f"class {preview(label)} has {int(rare.iloc[0])} rows; each class needs at least "
            f"{_MIN_ROWS_PER_CLASS} to appear in train, val and test",
            column=data.target,
            rows=list(table.loc[target == label, data.id]),
        )


def _count_outliers(data: DataConfig, aligned: pd.DataFrame, report: AlignReport) -> None:
    """Count what tabular preprocessing will absorb, so the summary shows it happened.

    Huge numeric values are left out of the fitted scaling and clipped; categorical values in
    val/test that train never had go to the 'unknown' slot at extraction and prediction.
    """
    numeric = list(data.columns.numeric)
    block = aligned[numeric].to_numpy(dtype=np.float64, na_value=np.nan)  # (rows, numeric columns)
    for column, count in zip(numeric, huge_masks(block).sum(axis=0).tolist(), strict=True):
        report.huge_values[column] = count
        if count:
            log.warning("%s: %d values are so far out that scaling ignores them; clipped", column, count)
    is_train = (aligned[SPLIT] == "train").to_numpy()
    for column in data.columns.categorical:
        values = aligned[column]
        seen = set(values[is_train].dropna())
        unseen = values[~is_train].notna() & ~values[~is_train].isin(seen)
        report.unseen_categories[column] = int(unseen.sum())


def presence_masks(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """presence() of each column, as a (rows, columns) bool array; float columns in one pass."""
    dtypes = frame.dtypes
    floats = {c for c in columns if pd.api.types.is_float_dtype(dtypes[c])}
    present = np.empty((len(frame), len(columns)), dtype=bool)
    where = [j for j, c in enumerate(columns) if c in floats]
    present[:, where] = frame[[columns[j] for j in where]].notna().to_numpy()
    for j, column in enumerate(columns):
        if column not in floats:
            present[:, j] = presence(frame[column]).to_numpy()
    return present


def presence(values: pd.Series) -> pd.Series:
    """False where a cell is missing, or blank text."""
    present = values.notna()
    if pd.api.types.is_string_dtype(values):
        present &= values.fillna("").str.strip().ne("")
    return present


def _split_keys(data: DataConfig, table: pd.DataFrame, aligned: pd.DataFrame) -> np.ndarray:
    """What the hash split hashes: the row's group (`data.split.group`) or, without one, its id."""
    ids = aligned[ID].to_numpy(dtype=object)
    group = data.split.group
    if group is None:
        return ids
    if group not in table.columns:
        raise DataError(f"data.split.group names column {group!r}, which no source has", column=group)
    values = table.set_index(data.id)[group].reindex(aligned[ID]).astype("string").str.strip()
    # A row without a group value is a group of its own.
    return np.where(
        values.isna() | values.eq(""), "id:" + pd.Series(ids).astype(str), "group:" + values.fillna("")
    )


def _check_leaks(data: DataConfig, aligned: pd.DataFrame, report: AlignReport) -> None:
    """Warn (or, with data.split.dedupe, refuse) when one text or file sits in two splits.

    A duplicated photo or description in train and test lets the model recall instead of
    predict, and the test score flatters it.
    """
    columns = [*raw_text_columns(data.columns), *[c for c in aligned.columns if c.startswith(DIGEST)]]
    for column in columns:
        values = aligned[column].astype("string").str.strip()
        usable = values.notna() & values.ne("")
        splits_per_value = aligned.loc[usable, SPLIT].groupby(values[usable]).nunique()
        shared = splits_per_value[splits_per_value > 1].index
        rows = usable & values.isin(shared)
        if not rows.any():
            continue
        name = column.removeprefix(DIGEST)
        report.cross_split_duplicates[name] = int(rows.sum())
        message = (
            f"{int(rows.sum())} rows share their {name!r} value with a row of another split "
            f"({len(shared)} distinct values), so test rows may have been seen in training"
        )
        if data.split.dedupe:
            raise DataError(
                f"{message}; deduplicate them or set data.split.group (data.split.dedupe is true)",
                column=name,
                rows=list(aligned.loc[rows.to_numpy(), ID]),
            )
        log.warning("%s; set data.split.dedupe: true to refuse this", message)


def _split(data: DataConfig, aligned: pd.DataFrame, given: pd.Series | None, keys: np.ndarray) -> np.ndarray:
    fractions = data.split.fractions
    target = aligned[TARGET].to_numpy()
    if given is not None:
        labels = given.reindex(aligned[ID]).astype("string").str.strip().str.lower().map(_SPLIT_ALIASES)
        unknown = labels.isna()
        if unknown.any():
            raise DataError(
                "split values must be train, val or test",
                column=data.split.column,
                rows=list(aligned.loc[unknown.to_numpy(), ID]),
            )
        split = labels.to_numpy(dtype=object)
        if not (split == "val").any():
            train_idx = np.flatnonzero(split == "train")
            val_share = fractions.val / (fractions.train + fractions.val)
            if data.split.method == "hash":
                carved = unit_hash(keys[train_idx], data.split.seed, "val") < val_share
                split[train_idx[carved]] = "val"
                return split.astype(str)
            _, val_idx = _carve(data, train_idx, round(len(train_idx) * val_share), target)
            split[val_idx] = "val"
        return split.astype(str)
    if data.split.method == "hash":
        return hash_split(keys, data.split.seed, fractions.train, fractions.val)
    index = np.arange(len(aligned))
    # Row counts, not fractions: sklearn rounds a fractional size up, so float error in
    # 0.15 / 0.85 would move a row (200 rows gave 139/31/30 rather than 140/30/30).
    rest, test_idx = _carve(data, index, round(len(index) * fractions.test), target)
    train_idx, val_idx = _carve(data, rest, round(len(index) * fractions.val), target)
    split = np.empty(len(aligned), dtype=object)
    split[train_idx], split[val_idx], split[test_idx] = "train", "val", "test"
    return split.astype(str)


def unit_hash(ids: np.ndarray, seed: int, salt: str = "") -> np.ndarray:
    """A number in [0, 1) per id from SHA-256 of (seed, salt, id): fixed, whatever else the table holds."""
    values = np.empty(len(ids), dtype=np.float64)
    for i, row_id in enumerate(ids):
        digest = hashlib.sha256(f"{seed}\0{salt}\0{row_id}".encode()).digest()
        values[i] = int.from_bytes(digest[:8], "big") / 2**64
    return values


def hash_split(ids: np.ndarray, seed: int, train: float, val: float) -> np.ndarray:
    """train | val | test by each id's hash: a row keeps its split when rows are added or removed.

    The shares match the fractions in expectation, and every class in proportion (the hash does
    not see the class), rather than exactly as a stratified draw would.
    """
    u = unit_hash(ids, seed)
    return np.where(u < train, "train", np.where(u < train + val, "val", "test")).astype(str)


def _carve(
    data: DataConfig, index: np.ndarray, count: int, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, carved): `count` rows of `index` drawn at random, stratified for classification."""
    count = min(max(count, 1), len(index) - 1)
    stratify = target[index] if data.task in ("binary", "multiclass") else None
    try:
        kept, carved = train_test_split(
            index, test_size=count, random_state=data.split.seed, stratify=stratify
        )
    except ValueError as err:
        raise DataError(
            f"cannot split {len(index)} rows into the configured fractions ({err})", column=data.target
        ) from None
    return kept, carved
