"""Feature extraction: pretrained encoders turn each embedded modality's cells into vectors.

Every distinct content (a text, an image file, ...) is encoded at most once, ever: cells are
keyed by content in the row-level cache (`tasks/features/cache`), and only cache misses reach an
encoder. A modality's extraction is three steps, so a flow can run each as its own task:

    plan_extraction   keys for every cell, cache lookup (verified shards only), miss list
    encode_chunk      encode one chunk of misses and commit it as one shard
    write_features    stream data/features/<modality>.parquet from the cache slots

A killed run loses at most the chunk in flight: the rerun's plan finds every committed shard.
How a modality's chunk is decoded and encoded is its own business (tasks/modalities/).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from tasks.config import Params
from tasks.contents import Contents
from tasks.device import (
    FLOAT32,
    batch_size_on,
    cores,
    decode_workers,
    default_precision,
    encoding_precision,
    pick_device,
    precision_problem,
)
from tasks.errors import BundleError
from tasks.features.cache import FeatureCache, ShardStore
from tasks.features.cache.fingerprints import encoder_identity
from tasks.features.cache.gather import SlotVectors, write_feature_file
from tasks.features.cache.store import CorruptShard
from tasks.features.feature_store import write_blocks
from tasks.features.fitted import FittedState, needs_fitting, prepare_state, state_digests, state_directory
from tasks.features.tabular import TabularState, fit_tabular, transform_tabular
from tasks.features.wide import wide_blocks
from tasks.modalities import EmbeddedModality, modality
from tasks.schema import ID, SPLIT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder as params.yaml names it: enough to fingerprint it and, if needed, load it."""

    kind: str  # the modality's name
    model: str
    size: int  # the modality's size knob: max_length for text, image_size for images, ...
    batch_size: int

    @classmethod
    def from_params(cls, params: Params, modality_name: str) -> EncoderSpec:
        settings = modality(modality_name).encoder_settings(params.encoders)
        return cls(modality_name, settings.model, settings.size, settings.batch_size)

    @property
    def modality(self) -> EmbeddedModality:
        return modality(self.kind)

    def preprocessing(self) -> dict[str, Any]:
        return self.modality.preprocessing(self.size)

    def load(self) -> nn.Module:
        return self.modality.load_encoder(self.model, self.size)

    def fingerprint(self, encoder: nn.Module) -> dict[str, Any]:
        """The same fingerprint the feature file and the model bundle record."""
        return self.modality.fingerprint(encoder, self.preprocessing())

    def fitted_at(self, directory: str | Path) -> EncoderSpec:
        """This spec loading a fitted encoder (tfidf) from its state directory instead of by name.

        The fingerprint comes from the loaded encoder (model id, weights digest), never from
        the path, so the extract out and a bundle's copy of one state fingerprint alike.
        """
        return replace(self, model=str(Path(directory).resolve()))

    @property
    def state_dir(self) -> Path | None:
        """The fitted state directory this spec loads from, or None for a shipped encoder."""
        return state_directory(self.kind, self.model)

    def own_precision(self) -> str | None:
        """float32 for a fitted encoder (tfidf: sparse products, no bf16 path) on any device;
        None for the others, which encode at the device's default."""
        return FLOAT32 if self.state_dir is not None else None


@dataclass
class ExtractStats:
    """What one modality's extraction did; the flow publishes it as a Prefect artifact."""

    modality: str
    rows: int = 0  # rows in the aligned table
    values: int = 0  # non-empty cells in the modality's columns
    unique: int = 0  # distinct contents among them
    reused: int = 0  # distinct contents served by the cache
    computed: int = 0  # distinct contents encoded by this run
    corrupt_shards: int = 0  # shards that failed their checksum (rows recomputed)
    chunks: int = 0  # chunks (= shards) this run encoded
    encoder_loaded: bool = False
    load_seconds: float = 0.0  # loading the encoder, a one-off cost per run
    seconds: float = 0.0  # plan + chunks + write, loading included
    forward_seconds: float = 0.0  # of which in the encoder's forward and the copy back
    fit: str = ""  # an encoder fitted on the train rows (tfidf): "fitted" by this run, or "reused"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["load_seconds"] = round(self.load_seconds, 3)
        out["forward_seconds"] = round(self.forward_seconds, 3)
        out["rows_per_s"] = round(self.rows / self.seconds, 1) if self.seconds else 0.0
        out["computed_per_s"] = round(self.computed / self.seconds, 2) if self.seconds else 0.0
        return out


class Extraction:
    """One modality's planned work; `encode_chunk` and `write_features` carry it out.

    A plain class, not a dataclass, so Prefect does not walk its (possibly huge) lists when
    it is passed from task to task.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        contents: Contents,
        store: ShardStore,
        fingerprint: dict[str, Any],
        slots: SlotVectors,
        misses: np.ndarray,
        chunk_rows: int,
        device: torch.device,
        encoder: nn.Module | None,
        stats: ExtractStats,
        precision: str,
    ) -> None:
        self.spec = spec
        self.contents = contents
        self.store = store
        self.fingerprint = fingerprint
        self.slots = slots
        self.misses = misses  # slots to encode, in encoding order
        self.chunk_rows = chunk_rows
        self.device = device
        self.precision = precision  # tasks.device: recorded in the feature file and the bundle
        self.encoder = encoder
        self.stats = stats
        self.feed: Any = None  # what the modality keeps between chunks (a decode-ahead feed)

    @property
    def chunk_count(self) -> int:
        return -(-len(self.misses) // self.chunk_rows)

    def chunk(self, index: int) -> np.ndarray:
        return self.misses[index * self.chunk_rows : (index + 1) * self.chunk_rows]

    def close(self) -> None:
        self.spec.modality.release(self)
        self.slots.close()


# --- the three steps --------------------------------------------------------------------------


def plan_extraction(
    spec: EncoderSpec,
    contents: Contents,
    rows: int,
    cache: FeatureCache,
    device: torch.device,
    chunk_rows: int,
    precision: str | None = None,
) -> Extraction:
    """Look every content up in the cache, fill the hits and list the misses in chunks.

    The encoder is loaded only when something must be encoded or its fingerprint is not
    remembered; whenever it is loaded, the remembered fingerprint is checked against it.
    `precision` (default: the encoder's own, else the device's) is how misses are encoded and
    which cache namespace is read; prediction passes the one the model's features had.
    """
    precision = precision or spec.own_precision() or default_precision(device)
    problem = precision_problem(precision, device)
    if problem is not None:
        raise BundleError(f"{spec.kind} encoder: {problem}")
    started = time.perf_counter()
    stats = ExtractStats(spec.kind, rows=rows, values=contents.values, unique=len(contents.keys))
    identity = encoder_identity(spec.kind, spec.model, spec.preprocessing())
    fingerprint = cache.fingerprints.get(identity)
    encoder = None
    while True:
        if fingerprint is None:
            encoder = encoder or _load(spec, device, stats)
            fingerprint = spec.fingerprint(encoder)
            cache.fingerprints.put(identity, fingerprint)
        store = cache.store(fingerprint, _pipeline(spec, precision))
        slots = SlotVectors(len(contents.keys), int(fingerprint["dim"]), cache.scratch)
        _fill_hits(store, contents.keys, slots, stats)
        misses = np.flatnonzero(~slots.filled)
        if not len(misses) or encoder is not None:
            break
        encoder = _load(spec, device, stats)
        if spec.fingerprint(encoder) == fingerprint:
            break
        log.warning("%s encoder differs from its remembered fingerprint; looking up again", spec.kind)
        slots.close()
        fingerprint = None
    stats.reused = len(contents.keys) - len(misses)
    misses = spec.modality.encoding_order(contents, misses)
    # A cheap encoder (tfidf: tens of thousands of texts a second) names a bigger chunk, or the
    # per-chunk task and shard would cost more than its encoding; neural ones keep chunk_rows.
    chunk_rows = max(chunk_rows, int(getattr(encoder, "chunk_contents", 0) or 0))
    batch = batch_size_on(device, spec.batch_size)
    chunk_rows = max(batch, chunk_rows // batch * batch)  # whole batches: no chunk splits one
    stats.seconds = time.perf_counter() - started
    log.info(
        "%s: %d rows, %d values, %d distinct: %d cached (hits), %d to encode (misses) in %d chunks",
        spec.kind, rows, contents.values, len(contents.keys), stats.reused, len(misses),
        -(-len(misses) // chunk_rows),
    )  # fmt: skip
    return Extraction(
        spec, contents, store, fingerprint, slots, misses, chunk_rows, device, encoder, stats, precision
    )


def encode_chunk(job: Extraction, index: int) -> int:
    """Encode chunk `index` of the misses, commit it as one shard; returns its size."""
    started = time.perf_counter()
    slots = job.chunk(index)
    if job.encoder is None:
        job.encoder = _load(job.spec, job.device, job.stats)
    with encoding_precision(job.precision):
        vectors, ok, forward = job.spec.modality.encode_chunk(job, index)
    job.store.commit([job.contents.keys[s] for s in slots], vectors, ok)
    job.slots.put(slots, vectors, ok)
    seconds = time.perf_counter() - started
    job.stats.computed += len(slots)
    job.stats.chunks += 1
    job.stats.forward_seconds += forward
    job.stats.seconds += seconds
    log.info(
        "%s: chunk %d/%d: %d encoded in %.1f s (%.1f/s); %d of %d distinct done",
        job.spec.kind, index + 1, job.chunk_count, len(slots), seconds, len(slots) / max(seconds, 1e-9),
        job.stats.reused + job.stats.computed, job.stats.unique,
    )  # fmt: skip
    return len(slots)


def write_features(job: Extraction, ids: np.ndarray, target: Path, dtype: str = "float32") -> ExtractStats:
    """Stream the feature file; its metadata carries the encoder fingerprint, precision and the
    stored dtype (`cache.dtype`), which train copies into the bundle."""
    started = time.perf_counter()
    metadata: dict[str, Any] = {"encoder": job.fingerprint, "precision": job.precision, "dtype": dtype}
    state = job.spec.state_dir
    if state is not None:  # which fitted state made these vectors: train copies it into the bundle
        metadata["state"] = {"files": state_digests(state)}
    write_feature_file(target, ids, job.contents.blocks, job.slots, metadata, dtype)
    job.stats.seconds += time.perf_counter() - started
    return job.stats


def plan_modality(
    params: Params,
    modality_name: str,
    aligned: pd.DataFrame,
    cache: FeatureCache,
    source: str = "aligned table",
    state: FittedState | None = None,
) -> Extraction:
    """plan_extraction for the columns of one embedded modality that params.yaml declares.

    An encoder fitted on the data (tfidf) is loaded from `state`; without one it is fitted on
    the aligned table's train rows here (or found in the cache, tasks/features/fitted.py).
    """
    spec = EncoderSpec.from_params(params, modality_name)
    if state is None and needs_fitting(params, modality_name):
        state = prepare_state(params, modality_name, aligned, cache.root)
    if state is not None:
        spec = spec.fitted_at(state.directory)
    plugin = spec.modality
    contents = plugin.contents(aligned, plugin.columns(params.data), plugin.root(params.data), source)
    device = pick_device(params.train.device)
    job = plan_extraction(spec, contents, len(aligned), cache, device, params.cache.chunk_rows)
    if state is not None:
        job.stats.fit = "reused" if state.reused else "fitted"
    return job


def extract_embeddings(
    params: Params,
    modality: str,
    aligned: pd.DataFrame,
    cache: FeatureCache,
    target: Path,
    source: str = "aligned table",
) -> ExtractStats:
    """All three steps in one call, without Prefect (tests and bench/extract.py use this)."""
    job = plan_modality(params, modality, aligned, cache, source)
    try:
        for index in range(job.chunk_count):
            encode_chunk(job, index)
        return write_features(job, row_ids(aligned), target, params.cache.dtype)
    finally:
        job.close()


def _fill_hits(store: ShardStore, keys: list[bytes], slots: SlotVectors, stats: ExtractStats) -> None:
    """Copy cached vectors into their slots, one checksum-verified shard at a time."""
    index = store.scan()
    stats.corrupt_shards += len(index.corrupt)
    found = index.locate(keys)
    hit_slots = np.flatnonzero(found >= 0)
    shard_of = index.shard[found[hit_slots]]
    row_of = index.row[found[hit_slots]]
    for position in np.unique(shard_of):
        name = index.shards[position]
        try:
            shard = store.read(name)
        except FileNotFoundError:
            continue  # discarded by a concurrent run: these rows are plain misses
        except CorruptShard as err:
            store.discard(name, f"corrupt ({err})")
            stats.corrupt_shards += 1
            continue
        mine = shard_of == position
        slots.put(hit_slots[mine], shard.vectors[row_of[mine]], shard.ok[row_of[mine]])


def _pipeline(spec: EncoderSpec, precision: str) -> dict[str, str]:
    """What besides the fingerprint decides the vectors: input handling and precision.

    bf16 embeddings differ from float32 ones far beyond rounding, so precision is part of
    the namespace; the device is not, as float32 on CPU and GPU agree to ~1e-6.
    """
    return {"input": spec.modality.input_version, "precision": precision}


def _load(spec: EncoderSpec, device: torch.device, stats: ExtractStats) -> nn.Module:
    """The encoder on its device, fingerprinted: hashing its weights (0.1 s for MiniLM's 90 MB,
    memoised on the instance) is part of the one-off cost of loading it, not of encoding."""
    started = time.perf_counter()
    encoder = _prepared(spec, spec.load(), device)
    spec.fingerprint(encoder)
    stats.encoder_loaded = True
    stats.load_seconds += time.perf_counter() - started
    log.info("%s: loaded encoder %s in %.1f s", spec.kind, spec.model, time.perf_counter() - started)
    return encoder


_PREPARED = "_fuseline_prepared_on"  # on a loaded encoder: the (modality, device) it was prepared for


def _prepared(spec: EncoderSpec, encoder: nn.Module, device: torch.device) -> nn.Module:
    """The modality's `prepare_encoder`, once per encoder object and device.

    A process-cached encoder (the API server's, a notebook's) comes back for every request;
    moving its hundred modules to where they already are cost 1.6 ms a request.
    """
    done = (spec.kind, str(device))
    first = next(iter(encoder.parameters()), None)
    if encoder.__dict__.get(_PREPARED) == done and (first is None or first.device == device):
        return encoder  # (a module moved elsewhere since is prepared again)
    prepared = spec.modality.prepare_encoder(encoder, device)
    prepared.__dict__[_PREPARED] = done
    return prepared


# --- without the cache: tabular -----------------------------------------------------------------


def tabular_features(
    aligned: pd.DataFrame, categorical: list[str], numeric: list[str]
) -> tuple[np.ndarray, TabularState]:
    """The tabular block for every row, with state fitted on the train split only."""
    state = fit_tabular(aligned[aligned[SPLIT] == "train"], categorical, numeric)
    return transform_tabular(aligned, state), state


def write_tabular_features(params: Params, aligned: pd.DataFrame, target: Path) -> None:
    """The tabular feature file: the scaled/one-hot block, wide_deep's hashed ids, fitted states."""
    columns = params.data.columns
    matrix, state = tabular_features(aligned, list(columns.categorical), list(columns.numeric))
    present = matrix.shape[1] > 0
    blocks = {"tabular": matrix} if present else {}
    masks = {"tabular": np.ones(len(aligned), dtype=bool)} if present else {}
    wide, wide_present, wide_state = wide_blocks(aligned, params)  # hashed ids for wide_deep's wide part
    write_blocks(
        target, row_ids(aligned), {**blocks, **wide}, {**masks, **wide_present},
        {"tabular_state": state.to_json(), "wide_state": wide_state},
    )  # fmt: skip


def row_ids(aligned: pd.DataFrame) -> np.ndarray:
    return aligned[ID].astype(str).to_numpy(dtype=object)


# --- hardware ---------------------------------------------------------------------------------


def configure_threads(device: torch.device) -> None:
    """Intra-op threads for the forward: the cores not lent to decoding files."""
    reserved = decode_workers(device) if device.type == "cpu" else 0
    torch.set_num_threads(max(1, cores() - reserved))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
