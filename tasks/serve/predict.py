"""Batch prediction: new raw rows through the same ingest -> align -> extract path as training.

Everything that shaped the training inputs comes from the bundle, not from today's
params.yaml: the column roles, the fitted tabular state and the encoders' fingerprints. A
bundle refuses to run with encoders whose fingerprints differ, because other weights (or
another library version) would feed the head inputs it never saw, and the predictions would
be wrong without any error.

Text and image embeddings go through extraction's own plan/encode steps and its row-level
cache: a text or image the pipeline has already encoded is read back, not recomputed, so
predicting rows that were in training gives evaluate's numbers exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from modelzoo.encoders.loading import fitted_encoder
from modelzoo.heads.blocks import is_wide_block
from tasks.align_report import AlignReport
from tasks.config import DataConfig, EncodersConfig, SourceConfig
from tasks.contents import Contents
from tasks.data.align import check_ids, presence
from tasks.data.ingest import typed_columns
from tasks.data.sources import read_source
from tasks.device import pick_device, precision_problem, single_threaded
from tasks.errors import BundleError, DataError, closest_names
from tasks.evaluate.evaluation import predictions_table
from tasks.features.cache import FeatureCache
from tasks.features.cache.fingerprints import encoder_identity
from tasks.features.encode_chunks import ProcessEncoderSpec
from tasks.features.extract import EncoderSpec, Extraction, encode_chunk, plan_extraction, row_ids
from tasks.features.fitted import bundle_state_dir
from tasks.features.tabular import TabularState, transform_tabular
from tasks.features.wide import WideState, transform_wide
from tasks.modalities import embedded, modality
from tasks.schema import ID, PRESENT
from tasks.serve.small_rows import presence_small, typed_small
from tasks.train.bundle import BundleMeta, load_bundle
from tasks.train.dataset import FeatureSet
from tasks.train.finetuned_member import member_loaders
from tasks.train.members import FinalModel, load_final_model

# --- reading new rows -----------------------------------------------------------------------


Roots = dict[str, Path]  # modality name -> the directory its file cells are relative to


def file_roots(data: DataConfig, overrides: dict[str, str] | None = None) -> Roots:
    """Each file modality's root: the bundle's `data.<modality>_root` unless overridden (absolute)."""
    overrides = overrides or {}
    unknown = sorted(set(overrides) - {p.name for p in embedded() if p.has_files})
    if unknown:
        raise DataError(f"--root names {unknown}, which are not file modalities")
    roots: Roots = {}
    for plugin in embedded():
        root = plugin.root(data)
        if root is not None:
            roots[plugin.name] = Path(overrides.get(plugin.name, root)).resolve()
    return roots


def read_new_rows(path: str | Path, data: DataConfig, roots: Roots) -> pd.DataFrame:
    """The raw file as an aligned-like table: row_id, typed feature columns, present__ masks.

    No target and no split: new rows have neither. Each modality inspects its cells as align
    does (file paths resolved under their root, decoded, hashed). Errors name the file,
    column and rows.
    """
    path = str(path)
    frame = read_source(SourceConfig(path=path), text_columns=[data.id, *data.columns.read_as_text()])
    return new_rows(frame, data, roots, path)


def new_rows(frame: pd.DataFrame, data: DataConfig, roots: Roots, source: str) -> pd.DataFrame:
    """`read_new_rows` of a table already in memory (the Python API's DataFrame, the HTTP server's
    rows); `source` names it in errors as the file's path does."""
    for column in [data.id, *data.columns.all()]:
        if column not in frame.columns:
            raise DataError(
                f"column {column!r}, which the model was trained on, is missing"
                f"{closest_names(column, frame.columns)}",
                file=source,
                column=column,
            )
    # A target (or split) column in the new rows is irrelevant to prediction: never let it fail.
    ignored = [c for c in (data.target, data.split.column) if c is not None and c in frame.columns]
    frame = frame.drop(columns=ignored) if ignored else frame
    small = typed_small(frame, data)  # a request's few rows: the same table without pandas' per-column costs
    rows = _typed_rows(frame, data, source) if small is None else small
    report = AlignReport()
    for plugin in embedded():
        plugin.inspect_cells(rows, rows[ID], data, roots.get(plugin.name), report)
    masks = {PRESENT + column: _presence(rows[column], small is not None) for column in data.columns.all()}
    return pd.concat([rows, pd.DataFrame(masks, index=rows.index)], axis=1)


def _typed_rows(frame: pd.DataFrame, data: DataConfig, source: str) -> pd.DataFrame:
    """row_id and the feature columns typed by ingest's steps; the id checked as align checks it."""
    typed = typed_columns(data, source, frame)
    check_ids(typed[data.id], source, data.id)
    rows = pd.DataFrame({ID: typed[data.id].astype("string")})
    for column in data.columns.all():
        rows[column] = typed[column]
    return rows


def _presence(values: pd.Series, small: bool) -> np.ndarray:
    found = presence_small(values) if small else None
    return presence(values).to_numpy() if found is None else found


def absolute_file_cells(rows: pd.DataFrame, data: DataConfig, roots: dict[str, Path]) -> pd.DataFrame:
    """The rows with each file cell (image, audio) as an absolute path under its modality's root.

    Extraction reads the same files either way (root / absolute path is that path), and
    members that open files themselves (the fine-tuned image model) then follow a `--root`
    override and a worker's own working directory, which they could not know otherwise.
    """
    rows = rows.copy(deep=False)  # copy-on-write: the caller's table keeps its cells
    for plugin in embedded():
        if plugin.name in roots:
            prefix = str(roots[plugin.name]) + os.sep
            for column in plugin.columns(data):
                cells = rows[column].astype("string").tolist()  # str or pd.NA
                absolute = [cell if cell is pd.NA else prefix + cell for cell in cells]
                rows[column] = pd.array(absolute, dtype="string")
    return rows


def chunk_bounds(n_rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    """[start, stop) of each chunk; chunks are the unit a task runner distributes."""
    return [(start, min(start + chunk_rows, n_rows)) for start in range(0, n_rows, chunk_rows)] or [(0, 0)]


# --- encoders --------------------------------------------------------------------------------


def encoder_specs(meta: BundleMeta, bundle_dir: str | Path) -> dict[str, EncoderSpec]:
    """The encoders the bundle's features came from, as its own params named them.

    An encoder fitted on the data (tfidf) is loaded from the bundle's own copy of its state,
    never from data/features or the cache, after checking that copy's file digests.
    """
    cfg = EncodersConfig.model_validate(meta.params.get("encoders", {}))
    specs: dict[str, EncoderSpec] = {}
    for plugin in embedded():
        if plugin.name in meta.encoders:
            settings = plugin.encoder_settings(cfg)
            spec = ProcessEncoderSpec(plugin.name, settings.model, settings.size, settings.batch_size)
            if fitted_encoder(plugin.name, settings.model):
                spec = spec.fitted_at(bundle_state_dir(bundle_dir, plugin.name, meta.encoders[plugin.name]))
            specs[plugin.name] = spec
    return specs


def current_fingerprint(spec: EncoderSpec, cache: FeatureCache) -> dict[str, Any]:
    """The fingerprint of the encoder installed here: remembered when possible, else loaded and hashed."""
    identity = encoder_identity(spec.kind, spec.model, spec.preprocessing())
    remembered = cache.fingerprints.get(identity)
    if remembered is not None:
        return remembered
    fingerprint = spec.fingerprint(spec.load())
    cache.fingerprints.put(identity, fingerprint)
    return fingerprint


def encoding_precision_of(bundle_dir: str | Path, kind: str, record: dict[str, Any]) -> str:
    """The precision the bundle's `kind` features were encoded at, if this machine can repeat it.

    A model learns the vectors it was given; bf16 ones differ from float32 ones far beyond
    rounding, so prediction encodes at the recorded precision or refuses.
    """
    precision = record.get("precision")
    if precision is None:
        raise BundleError(
            f"{bundle_dir}: the bundle does not record the precision its {kind} features were encoded "
            "at (bundles trained before fuseline recorded it); retrain it (dvc repro)"
        )
    problem = precision_problem(precision, pick_device("auto"))
    if problem is not None:
        raise BundleError(
            f"{bundle_dir}: the model was trained on {kind} features encoded at {precision}, which this "
            f"machine cannot repeat ({problem}); predict on a machine with a CUDA GPU, or retrain with "
            "`train.device: cpu` so extraction encodes in float32"
        )
    return str(precision)


def fingerprint_of(record: dict[str, Any]) -> dict[str, Any]:
    """The encoder's own fingerprint in a bundle's encoder record (which also holds the precision,
    the stored dtype and, for a fitted encoder, where its state is)."""
    return {key: value for key, value in record.items() if key not in ("precision", "dtype", "state")}


def check_fingerprint(
    bundle_dir: str | Path, kind: str, expected: dict[str, Any], actual: dict[str, Any]
) -> None:
    """Refuse, naming every differing field, when the encoder at hand is not the trained one."""
    differences = fingerprint_differences(expected, actual)
    if differences:
        shown = "; ".join(f"{key}: bundle {old!r}, here {new!r}" for key, old, new in differences)
        raise BundleError(
            f"{bundle_dir}: the {kind} encoder here is not the one the model was trained with ({shown}). "
            "Its features would not mean what the model learned; retrain (dvc repro) with this encoder, "
            "or install the library versions the bundle names."
        )


def fingerprint_differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, bundle value, current value) for every leaf that differs."""
    flat_expected, flat_actual = _flatten(expected), _flatten(actual)
    keys = sorted(set(flat_expected) | set(flat_actual))
    return [
        (k, flat_expected.get(k), flat_actual.get(k))
        for k in keys
        if flat_expected.get(k) != flat_actual.get(k)
    ]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out |= _flatten(item, f"{prefix}{key}.")
        return out
    return {prefix.rstrip("."): list(value) if isinstance(value, tuple) else value}


# --- the predictor ----------------------------------------------------------------------------


@dataclass
class Predictor:
    """A loaded bundle whose encoders have been checked against its fingerprints."""

    bundle_dir: str
    model: nn.Module
    meta: BundleMeta
    specs: dict[str, EncoderSpec]
    final: FinalModel  # what is served: the ensemble chosen on val (members may read raw columns)

    @cached_property
    def data(self) -> DataConfig:
        """The bundle's data section, validated once (read several times for every table predicted)."""
        return DataConfig.model_validate(self.meta.params["data"])

    def features(
        self, rows: pd.DataFrame, roots: Roots, cache: FeatureCache, device: torch.device
    ) -> FeatureSet:
        """The model's input blocks for these rows, computed (or read from the cache) as extract does."""
        data = self.data
        _check_columns(rows, data)
        inputs: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        if self.meta.tabular is not None:
            state = TabularState.from_json(self.meta.tabular)
            if state.width:
                inputs["tabular"] = transform_tabular(rows, state)
                present["tabular"] = np.ones(len(rows), dtype=bool)
        if self.meta.wide is not None and any(is_wide_block(block) for block in self.meta.in_dims):
            blocks, masks = transform_wide(rows, WideState.from_json(self.meta.wide))
            inputs |= blocks
            present |= masks
        for kind, spec in self.specs.items():
            plugin = modality(kind)
            columns = plugin.columns(data)
            if not columns:
                continue
            root = roots.get(kind) or plugin.root(data)  # not overridden: the bundle's own root
            contents = plugin.contents(rows, columns, root, "new rows")
            blocks, masks = self._embed(kind, spec, contents, len(rows), cache, device)
            inputs |= blocks
            present |= masks
        self._check_blocks(inputs)
        ids = row_ids(rows)
        return FeatureSet(
            ids=ids,
            split=np.full(len(ids), "predict"),
            target=np.zeros(len(ids), dtype=np.float32),
            inputs=inputs,
            present=present,
            classes=self.meta.classes,
        )

    def predict(
        self, rows: pd.DataFrame, roots: Roots, cache: FeatureCache, device: torch.device
    ) -> pd.DataFrame:
        """<data.id>, prob_<class>..., prediction: reports/test_predictions.parquet's values, in the
        user's terms (see `served_table`)."""
        features, predictions = self.predictions(rows, roots, cache, device)
        table = predictions_table(self.meta.task, features, predictions)
        return served_table(table, self.data, self.meta)

    def predictions(
        self, rows: pd.DataFrame, roots: Roots, cache: FeatureCache, device: torch.device
    ) -> tuple[FeatureSet, np.ndarray]:
        """The rows' input blocks and the served model's predictions for them, as arrays."""
        features = self.features(rows, roots, cache, device)
        with single_threaded():  # as evaluate predicts: the same rows give the same bits
            return features, self.final.predict(features, rows)

    def _embed(
        self,
        kind: str,
        spec: EncoderSpec,
        contents: Contents,
        n_rows: int,
        cache: FeatureCache,
        device: torch.device,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Cache hits read back, misses encoded in one chunk and committed as a shard."""
        record = self.meta.encoders[kind]
        precision = encoding_precision_of(self.bundle_dir, kind, record)
        if not contents.keys:  # no cell of this kind (a request without a photo): nothing to look up
            return absent_blocks(contents, n_rows, int(record["dim"]))
        job = plan_extraction(spec, contents, n_rows, cache, device, max(1, len(contents.keys)), precision)
        try:
            check_fingerprint(self.bundle_dir, kind, fingerprint_of(record), job.fingerprint)
            for index in range(job.chunk_count):
                encode_chunk(job, index)
            blocks, present = gather_blocks(job, n_rows)
            if record.get("dtype") == "float16":  # what train read: the feature files' rounded vectors
                blocks = {name: block.astype(np.float16).astype(np.float32) for name, block in blocks.items()}
            return blocks, present
        finally:
            job.close()

    def _check_blocks(self, inputs: dict[str, np.ndarray]) -> None:
        for block, width in self.meta.in_dims.items():
            if block not in inputs:
                raise BundleError(
                    f"{self.bundle_dir}: the model reads block {block!r}, which batch prediction cannot build"
                )
            if inputs[block].shape[1] != width:
                raise BundleError(
                    f"{self.bundle_dir}: input block {block!r} has width {inputs[block].shape[1]}, "
                    f"the model expects {width}"
                )


def served_table(table: pd.DataFrame, data: DataConfig, meta: BundleMeta) -> pd.DataFrame:
    """Evaluate's per-row table as a user reads prediction output: their id column's name, not
    `row_id`, and each predicted class in the type the training target had (4, not "4").

    The bundle keeps class labels as strings; its `target_type` (recorded at train time) says
    what they were. A bundle without it (trained before it was recorded) keeps the strings. An
    id named like one of the other columns keeps `row_id`.
    """
    name = data.id if data.id not in table.columns else ID
    table = table.rename(columns={ID: name})
    if meta.task in ("binary", "multiclass"):
        table["prediction"] = typed_labels(table["prediction"], meta.target_type, meta.classes)
    return table


_LABEL_TYPES = {
    "int": (int, "int64"),
    "float": (float, "float64"),
    "bool": ({"True": True, "False": False}.__getitem__, "bool"),
}


def typed_labels(labels: pd.Series, target_type: str | None, classes: Sequence[str]) -> pd.Series:
    """Class labels (ingest's strings) back in `target_type`, unchanged unless every class converts
    (decided over all classes, so every chunk of one prediction gets the same type)."""
    if target_type not in _LABEL_TYPES:
        return labels
    convert, dtype = _LABEL_TYPES[target_type]
    try:
        typed = {label: convert(label) for label in classes}
    except (ValueError, KeyError):
        return labels
    return labels.map(typed).astype(dtype)


def _check_columns(rows: pd.DataFrame, data: DataConfig) -> None:
    """Rows aligned under other params (a champion re-scored on today's table) may lack a column
    the model reads: name it in one line rather than fail on it deep in a transform."""
    for column in data.columns.all():
        if column not in rows.columns:
            raise DataError(
                "the model was trained on this column, and these rows do not have it (removed or renamed "
                f"since?){closest_names(column, rows.columns)}",
                column=column,
            )


def gather_blocks(job: Extraction, n_rows: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per block: (rows, dim) vectors and presence, as write_feature_file lays them out."""
    blocks: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for block in job.contents.blocks:
        have = block.slots >= 0
        mask = np.zeros(n_rows, dtype=bool)
        mask[have] = job.slots.ok[block.slots[have]]
        matrix = np.zeros((n_rows, job.slots.dim), dtype=np.float32)  # (rows, dim)
        matrix[mask] = job.slots.vectors[block.slots[mask]]
        blocks[block.name], present[block.name] = matrix, mask
    return blocks, present


def absent_blocks(
    contents: Contents, n_rows: int, dim: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`gather_blocks` of contents without a single value: zero vectors, all absent."""
    blocks = {block.name: np.zeros((n_rows, dim), dtype=np.float32) for block in contents.blocks}
    return blocks, {block.name: np.zeros(n_rows, dtype=bool) for block in contents.blocks}


def load_predictor(bundle_dir: str | Path, cache: FeatureCache) -> Predictor:
    """The bundle, after checking each encoder here against the fingerprint it was trained with."""
    model, meta = load_bundle(Path(bundle_dir))
    specs = encoder_specs(meta, bundle_dir)
    for kind, spec in specs.items():
        record = meta.encoders[kind]
        encoding_precision_of(bundle_dir, kind, record)
        check_fingerprint(bundle_dir, kind, fingerprint_of(record), current_fingerprint(spec, cache))
    final = load_final_model(Path(bundle_dir), (model, meta), member_loaders(cache.root))
    return Predictor(str(bundle_dir), model, meta, specs, final)


@lru_cache(maxsize=4)
def cached_predictor(bundle_dir: str, bundle_mtime_ns: int, cache_dir: str) -> Predictor:
    """One Predictor per process and bundle version (a rewritten bundle has a new mtime)."""
    del bundle_mtime_ns  # part of the cache key only
    return load_predictor(bundle_dir, FeatureCache(cache_dir))
