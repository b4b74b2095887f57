"""The two sides of a drift check: the served model's train rows, and rows it has never seen.

Both are aligned-like tables (row_id, the declared columns typed as align types them,
`present__` masks, `sha256__` file digests), so every check reads them the same way:

- reference: the served model's train rows (its lineage, tasks/train/lineage.py: same id,
  same content) as data/aligned/aligned.parquet holds them, and for the model's own output
  its val and test rows. data/aligned is rewritten by every run, so a row edited since the
  model was trained, or gone, is left out, and the report says how many were found;
- batch: a file of new rows, read the way `fuseline predict` reads them, or else the rows of
  the current source tables (read as ingest and align read them) that the model has never
  seen: added since it was trained, or changed since.

Which model is served: the registry's promoted version (`schedule.registry`), or models/
while nothing has been promoted (`served_model_dir`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.config import DataConfig, SourceConfig
from tasks.data.align import align
from tasks.data.ingest import ingest_sources, read_snapshots, typed_columns
from tasks.data.sources import read_source
from tasks.errors import DataError
from tasks.paths import Layout
from tasks.schema import ID, SPLIT, TARGET
from tasks.serve.predict import Roots, read_new_rows
from tasks.serve.promotion import current_entry, resolve_model_dir
from tasks.train.lineage import Lineage, lineage_of


@dataclass(frozen=True)
class Reference:
    """The served model's rows as the aligned table holds them, and what they are."""

    train: pd.DataFrame  # what it learned from: the drift reference
    held_out: pd.DataFrame  # rows it never fitted (val and test; test after a refit): CBPE's reference
    lineage: Lineage  # every row it has seen, to tell the rows it has not
    description: str  # for the report, e.g. "700 of the 700 train rows of models"
    notes: list[str] = field(default_factory=list)


def served_model_dir(registry: Path, models: Path) -> tuple[Path, str]:
    """The model deployments serve: the registry's promoted version, else models/; and why.

    Before the first promotion there is no registry (or no current.json in it) and the
    pipeline's own models/ is the only model there is.
    """
    entry = current_entry(registry) if Path(registry).is_dir() else None
    if entry is None:
        return Path(models), f"{models}: nothing promoted in {registry} yet"
    return resolve_model_dir(Path(registry)), f"the promoted {entry.get('version')} of {registry}"


def aligned_rows(layout: Layout) -> pd.DataFrame:
    """The aligned table of the last pipeline run; a one-line error when there is none yet."""
    if not layout.aligned.is_file():
        raise DataError(
            "no training reference: the aligned table is missing; run the pipeline first (dvc repro)",
            file=str(layout.aligned),
        )
    return pd.read_parquet(layout.aligned)


def model_reference(
    aligned: pd.DataFrame, lineage: Lineage | None, model: str | None, aligned_path: str
) -> Reference:
    """The rows `model` learned from (train; val too after a refit) and held out, found in `aligned`.

    Without a lineage (no model, or a bundle trained before lineage was kept) the model is
    taken to have seen exactly `aligned`, with its own split, as before lineage existed.
    """
    notes = []
    if lineage is None:
        lineage = lineage_of(aligned)
        if model is not None:
            notes.append(f"{model} records no lineage (trained before it was kept): its rows are taken as "
                         f"{aligned_path}'s")  # fmt: skip
    unfit = lineage.unfit(aligned)
    if unfit:
        notes.append(f"{aligned_path} no longer holds {', '.join(map(repr, unfit))} as the model saw them: "
                     "its rows were matched by id alone")  # fmt: skip
    splits = lineage.splits_of(aligned)  # the model's own: the last run may have split otherwise
    # the rows it learned from (train, and val after a refit) and those it never fitted
    train = aligned[np.isin(splits, lineage.fitted)].reset_index(drop=True)
    unfitted = [s for s in ("val", "test") if s not in lineage.fitted]
    held_out = aligned[np.isin(splits, unfitted)].reset_index(drop=True)
    counts = lineage.counts()
    expected, owner = sum(counts[s] for s in lineage.fitted), model or "the last pipeline run"
    if train.empty:
        raise DataError(
            f"none of the {expected} train rows of {owner} are in the aligned table (edited or gone since); "
            "reproduce it (dvc repro, or dvc checkout) or monitor a newer model (--model)",
            file=aligned_path,
        )
    described = f"{len(train)} of the {expected} train rows of {owner}, as {aligned_path} holds them"
    return Reference(train, held_out, lineage, described, notes)


def split_rows(aligned: pd.DataFrame, *splits: str) -> pd.DataFrame:
    return aligned[aligned[SPLIT].isin(splits)].reset_index(drop=True)


def batch_from_file(path: str | Path, data: DataConfig, roots: Roots) -> pd.DataFrame:
    """New rows from a csv, parquet or jsonl file, exactly as batch prediction reads them."""
    return read_new_rows(path, data, roots)


def batch_from_sources(data: DataConfig, probe_memo: Path | None = None) -> pd.DataFrame:
    """Every row the sources hold now, snapshotted and aligned as the pipeline would (in a temp dir).

    `probe_memo`: align's memo of files already hashed (tasks/modalities/probe_memo.py), so a
    scheduled run reads only the files added since; None reads every file."""
    with tempfile.TemporaryDirectory(prefix="fuseline-monitor-") as tmp:
        ingest_sources(data, Path(tmp) / "raw")
        aligned, _ = align(data, read_snapshots(Path(tmp) / "raw"), probe_memo)
    return aligned


@dataclass(frozen=True)
class Batch:
    """The rows compared with the reference, and what they are."""

    rows: pd.DataFrame
    description: str  # for the report, e.g. "1000 rows of the current sources the model has not seen ..."
    notes: list[str] = field(default_factory=list)


def new_batch(
    data: DataConfig, input_path: str | None, roots: Roots, lineage: Lineage, probe_memo: Path | None = None
) -> Batch:
    """`input_path` as a whole, or else the rows of the current sources the model has never seen.

    Comparing every current row would count the train rows themselves as "new": ten thousand
    of them around a thousand shifted ones dilute a PSI of 0.9 to under 0.01.
    """
    if input_path:
        rows = batch_from_file(input_path, data, roots)
        return Batch(rows, f"{len(rows)} rows of {input_path}")
    current = batch_from_sources(data, probe_memo)
    rows = unseen_rows(current, lineage)
    described = f"{len(rows)} rows of the current sources the model has not seen ({len(current)} rows in all)"
    unfit = lineage.unfit(current)
    shown = ", ".join(map(repr, unfit))
    notes = [
        f"the current sources no longer hold {shown} as the model saw them: its rows were told by id alone"
    ]
    notes = notes if unfit else []
    return Batch(rows, described, notes)


def newest_rows(batch: Batch, latest: Lineage | None) -> Batch | None:
    """The batch's rows that the last trained model (models/, `latest`) has not seen either.

    The batch is every row the served model has not seen: after a run of retrains whose
    candidates were kept, several weeks of rows, in which a shift confined to the latest
    week is diluted (a 1 sd shift in one drop of four went unflagged). The rows no model has
    trained on yet are what arrived since the last retrain, compared on their own as well.
    None when that is the whole batch (the served model is the last trained) or nothing.
    """
    if latest is None or batch.rows.empty:
        return None
    rows = unseen_rows(batch.rows, latest)
    if rows.empty or len(rows) == len(batch.rows):
        return None
    return Batch(rows, f"{len(rows)} of them that no model has trained on yet (since the last retrain)")


def with_file_labels(batch: Batch, path: str | Path, data: DataConfig) -> Batch:
    """The batch with its `target` column from the file, where the file has labels (some may be blank).

    Batch prediction ignores a target column; the monitor scores the model on the labels
    that arrived. Typed as ingest types targets, so "1" in a CSV and 1.0 in Parquet are one
    class. A target column that cannot be read so (a nested cell, a number that is not one)
    is a note, not a failure: drift is still worth reporting.
    """
    frame = read_source(SourceConfig(path=str(path)), text_columns=[data.id])
    if data.target not in frame.columns:
        return batch
    try:
        typed = typed_columns(data, str(path), frame[[data.id, data.target]])
    except DataError as err:
        return replace(batch, notes=[*batch.notes, f"labels in {path} left out: {err}"])
    labels = pd.Series(typed[data.target].to_numpy(dtype=object), index=typed[data.id].astype("string"))
    labels = labels[~labels.index.duplicated()]
    rows = batch.rows.assign(**{TARGET: labels.reindex(batch.rows[ID].astype("string")).to_numpy()})
    return replace(batch, rows=rows)


def unseen_rows(rows: pd.DataFrame, lineage: Lineage) -> pd.DataFrame:
    """The rows the model has never seen: ids it never had, or its ids with other content."""
    return rows[~lineage.seen(rows)].reset_index(drop=True)


def sample_rows(rows: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most `max_rows` rows, drawn with `seed` (the same rows every run), in their original order."""
    if len(rows) <= max_rows:
        return rows.reset_index(drop=True)
    return rows.sample(n=max_rows, random_state=seed).sort_index().reset_index(drop=True)
