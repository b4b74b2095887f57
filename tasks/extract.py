"""Feature extraction: pretrained encoders turn text and images into fixed-size embeddings.

Every distinct text or image is encoded at most once, ever: cells are keyed by content in
the row-level cache (`tasks/cache`), and only cache misses reach an encoder. A modality's
extraction is three steps, so a flow can run each as its own task:

    plan_extraction   keys for every cell, cache lookup (verified shards only), miss list
    encode_chunk      encode one chunk of misses and commit it as one shard
    write_features    stream data/features/<modality>.parquet from the cache slots

A killed run loses at most the chunk in flight: the rerun's plan finds every committed shard.

Speed: batched under `torch.inference_mode`; texts sorted by length and padded per batch;
images decoded and resized in DataLoader workers where there are cores to spare (on a thread
ahead of the forward on a 2-core CPU, where workers' start-up and IPC cost more than they
save), channels_last; on
CUDA also pinned memory, non-blocking copies, bf16 autocast and batches of at least 256.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from modelzoo.encoders.base import ImageEncoder, ImagePreprocessing, TextEncoder
from modelzoo.encoders.loading import encoder_fingerprint, load_image_encoder, load_text_encoder
from tasks.cache import FeatureCache, ShardStore
from tasks.cache.contents import Contents, image_contents, text_contents
from tasks.cache.fingerprints import encoder_identity
from tasks.cache.gather import SlotVectors, write_feature_file
from tasks.cache.store import CorruptShard
from tasks.config import Params
from tasks.device import pick_device
from tasks.errors import DataError
from tasks.feature_store import write_blocks
from tasks.images import DECODE_VERSION, ImageDecodeError, load_square_rgb
from tasks.schema import ID, SPLIT
from tasks.tabular import TabularState, fit_tabular, transform_tabular
from tasks.wide import wide_blocks

log = logging.getLogger(__name__)

# What fuseline does to a content before the encoder sees it; part of the cache namespace, so
# a change here (or a new tasks/images.py DECODE_VERSION) stops old entries from matching.
TEXT_INPUT = "utf8-verbatim/v1"
IMAGE_DECODE = f"tasks.images/v{DECODE_VERSION}"
_CUDA_MIN_BATCH = 256
# Batches decoded ahead on a thread when there are no decode worker processes (see _Prefetched).
_PREFETCH_BATCHES = 2
# How an image fared in a decode worker.
_DECODED, _UNDECODABLE, _CHANGED = 1, 0, -1


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder as params.yaml names it: enough to fingerprint it and, if needed, load it."""

    kind: str  # "text" | "image"
    model: str
    size: int  # max_length for text, image_size for images
    batch_size: int

    @classmethod
    def from_params(cls, params: Params, modality: str) -> EncoderSpec:
        if modality == "text":
            text = params.encoders.text
            return cls("text", text.model, text.max_length, text.batch_size)
        image = params.encoders.image
        return cls("image", image.model, image.image_size, image.batch_size)

    def preprocessing(self) -> dict[str, int]:
        return {"max_length": self.size} if self.kind == "text" else {"image_size": self.size}

    def load(self) -> TextEncoder | ImageEncoder:
        if self.kind == "text":
            return load_text_encoder(self.model)
        return load_image_encoder(self.model, self.size)

    def fingerprint(self, encoder: TextEncoder | ImageEncoder) -> dict[str, Any]:
        """The same fingerprint the feature file and the model bundle record."""
        return encoder_fingerprint(encoder, **self.preprocessing())


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
        encoder: TextEncoder | ImageEncoder | None,
        stats: ExtractStats,
    ) -> None:
        self.spec = spec
        self.contents = contents
        self.store = store
        self.fingerprint = fingerprint
        self.slots = slots
        self.misses = misses  # slots to encode, in encoding order
        self.chunk_rows = chunk_rows
        self.device = device
        self.encoder = encoder
        self.stats = stats
        self.feed: _ImageFeed | None = None

    @property
    def chunk_count(self) -> int:
        return -(-len(self.misses) // self.chunk_rows)

    def chunk(self, index: int) -> np.ndarray:
        return self.misses[index * self.chunk_rows : (index + 1) * self.chunk_rows]

    def close(self) -> None:
        self.drop_feed()
        self.slots.close()

    def drop_feed(self) -> None:
        if self.feed is not None:
            self.feed.close()
            self.feed = None


# --- the three steps --------------------------------------------------------------------------


def plan_extraction(
    spec: EncoderSpec,
    contents: Contents,
    rows: int,
    cache: FeatureCache,
    device: torch.device,
    chunk_rows: int,
) -> Extraction:
    """Look every content up in the cache, fill the hits and list the misses in chunks.

    The encoder is loaded only when something must be encoded or its fingerprint is not
    remembered; whenever it is loaded, the remembered fingerprint is checked against it.
    """
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
        store = cache.store(fingerprint, _pipeline(spec, device))
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
    if spec.kind == "text":  # similar lengths share a batch, so each pads little
        misses = np.array(
            sorted(misses, key=lambda s: (len(contents.sources[s]), contents.sources[s])), np.int64
        )
    batch = batch_size_for(spec, device)
    chunk_rows = max(batch, chunk_rows // batch * batch)  # whole batches: no chunk splits one
    stats.seconds = time.perf_counter() - started
    log.info(
        "%s: %d rows, %d values, %d distinct: %d cached (hits), %d to encode (misses) in %d chunks",
        spec.kind, rows, contents.values, len(contents.keys), stats.reused, len(misses),
        -(-len(misses) // chunk_rows),
    )  # fmt: skip
    return Extraction(spec, contents, store, fingerprint, slots, misses, chunk_rows, device, encoder, stats)


def encode_chunk(job: Extraction, index: int) -> int:
    """Encode chunk `index` of the misses, commit it as one shard; returns its size."""
    started = time.perf_counter()
    slots = job.chunk(index)
    if job.encoder is None:
        job.encoder = _load(job.spec, job.device, job.stats)
    if job.spec.kind == "text":
        texts = [job.contents.sources[s] for s in slots]
        batch = batch_size_for(job.spec, job.device)
        vectors, forward = encode_sorted_texts(job.encoder, texts, job.spec.size, batch, job.device)  # type: ignore[arg-type]
        ok = np.ones(len(slots), dtype=bool)
    else:
        vectors, ok, forward = _encode_image_chunk(job, index)
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


def write_features(job: Extraction, ids: np.ndarray, target: Path) -> ExtractStats:
    """Stream the feature file; its metadata carries the encoder fingerprint, as train expects."""
    started = time.perf_counter()
    write_feature_file(target, ids, job.contents.blocks, job.slots, {"encoder": job.fingerprint})
    job.stats.seconds += time.perf_counter() - started
    return job.stats


def plan_modality(
    params: Params, modality: str, aligned: pd.DataFrame, cache: FeatureCache, source: str = "aligned table"
) -> Extraction:
    """plan_extraction for the text or image columns that params.yaml declares."""
    spec = EncoderSpec.from_params(params, modality)
    if modality == "text":
        contents = text_contents(aligned, list(params.data.columns.text))
    else:
        contents = image_contents(
            aligned, list(params.data.columns.image), Path(params.data.image_root), source
        )
    device = pick_device(params.train.device)
    return plan_extraction(spec, contents, len(aligned), cache, device, params.cache.chunk_rows)


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
        return write_features(job, row_ids(aligned), target)
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


def _pipeline(spec: EncoderSpec, device: torch.device) -> dict[str, str]:
    """What besides the fingerprint decides the vectors: input handling and precision.

    bf16 embeddings differ from float32 ones far beyond rounding, so precision is part of
    the namespace; the device is not, as float32 on CPU and GPU agree to ~1e-6.
    """
    return {
        "input": TEXT_INPUT if spec.kind == "text" else IMAGE_DECODE,
        "precision": "bfloat16-autocast" if device.type == "cuda" else "float32",
    }


def _load(spec: EncoderSpec, device: torch.device, stats: ExtractStats) -> TextEncoder | ImageEncoder:
    started = time.perf_counter()
    encoder = prepare_encoder(spec.load(), device)
    stats.encoder_loaded = True
    stats.load_seconds += time.perf_counter() - started
    log.info("%s: loaded encoder %s in %.1f s", spec.kind, spec.model, time.perf_counter() - started)
    return encoder


# --- text -------------------------------------------------------------------------------------


def encode_sorted_texts(
    encoder: TextEncoder, texts: list[str], max_length: int, batch_size: int, device: torch.device
) -> tuple[np.ndarray, float]:
    """(N, dim) float32 embeddings of `texts`, which the caller sorted by length; + forward seconds.

    Tokenised a batch at a time, each padded only to its own longest row. The tokenizer runs
    serially: its parallel pool would spin beside torch's threads between batches of 64 and
    cost the forward 10-25% on a 2-core CPU, for tokenisation that takes ~2% of the time.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    forward = 0.0
    with torch.inference_mode(), autocast_for(device):
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            tokens = encoder.tokenize(batch, max_length)
            input_ids = _to_device(tokens["input_ids"], device)  # (B, T)
            mask = _to_device(tokens["attention_mask"], device)  # (B, T)
            began = time.perf_counter()
            out[start : start + len(batch)] = encoder(input_ids, mask).float().cpu().numpy()  # (B, dim)
            forward += time.perf_counter() - began
    return out, forward


# --- images -----------------------------------------------------------------------------------


class _ImageFiles(Dataset):
    """Reads, verifies and decodes images (in DataLoader workers where there are any).

    With digests, each file's bytes are checked against the key its embedding will be
    cached under: an image edited after align must not store its new vector under the old key.
    """

    def __init__(self, paths: list[Path | None], digests: list[bytes] | None, size: int) -> None:
        self.paths = paths
        self.digests = digests
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        """(S, S, 3) uint8 pixels and how decoding went.

        Pixels stay numpy and HWC until the batch is on the device: torch ops here would each
        run on the intra-op thread pool, whose hand-offs cost more than these small copies
        (12x slower decoding measured on a busy 2-core machine), and an NHWC batch viewed as
        NCHW already is channels_last, so no transposing copy is ever made.
        """
        blank = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        path = self.paths[index]
        if path is None:
            return blank, _UNDECODABLE
        source: Path | bytes = path
        if self.digests is not None:  # decode the very bytes that were verified
            try:
                source = path.read_bytes()
            except OSError:
                return blank, _CHANGED
            if hashlib.sha256(source).digest() != self.digests[index]:
                return blank, _CHANGED
        try:
            return load_square_rgb(source, self.size), _DECODED  # (S, S, 3) uint8
        except ImageDecodeError as err:
            log.warning("image %s: %s; treated as missing", path, err.reason)
            return blank, _UNDECODABLE


def _collate_images(items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, S, 3) uint8 and (B,) outcomes, stacked by numpy (see _ImageFiles.__getitem__)."""
    pixels = np.stack([pixels for pixels, _ in items])  # (B, S, S, 3)
    return torch.from_numpy(pixels), torch.from_numpy(np.array([status for _, status in items]))


def _image_loader(dataset: _ImageFiles, batch_size: int, device: torch.device) -> DataLoader:
    workers = _decode_workers(device)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=_collate_images,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )


def normalise_images(pixels: torch.Tensor, prep: ImagePreprocessing, device: torch.device) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 in channels_last, normalised for the encoder."""
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255.0
    images = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float()  # NHWC memory = channels_last
    images.sub_(mean).div_(std)
    return images.contiguous(memory_format=torch.channels_last)  # a no-op: already laid out so


def encode_image_batches(
    encoder: ImageEncoder,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    count: int,
    device: torch.device,
    on_batch: Callable[[np.ndarray], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """(count, dim) embeddings, (count,) decode outcomes and forward seconds for `count` images.

    `on_batch` sees each batch's outcomes as they arrive, so a bad file fails the run at once.
    """
    out = np.zeros((count, encoder.dim), dtype=np.float32)
    outcome = np.zeros(count, dtype=np.int64)
    done, forward = 0, 0.0
    with torch.inference_mode(), autocast_for(device):
        while done < count:
            pixels, status = next(batches)  # (B, S, S, 3) uint8, (B,)
            images = normalise_images(pixels, encoder.preprocessing, device)  # (B, 3, S, S)
            began = time.perf_counter()
            out[done : done + len(pixels)] = encoder(images).float().cpu().numpy()  # (B, dim)
            forward += time.perf_counter() - began
            outcome[done : done + len(pixels)] = status.numpy()
            if on_batch is not None:
                on_batch(outcome[: done + len(pixels)])
            done += len(pixels)
    out[outcome != _DECODED] = 0.0
    return out, outcome, forward


class _ImageFeed:
    """One DataLoader over the misses from some chunk on, consumed a chunk at a time.

    A loader per chunk would restart its decode workers for every chunk (task); this one
    keeps them decoding ahead across chunk boundaries.
    """

    def __init__(self, job: Extraction, first_chunk: int) -> None:
        slots = job.misses[first_chunk * job.chunk_rows :]
        dataset = _ImageFiles(
            [job.contents.sources[s] for s in slots], [job.contents.keys[s] for s in slots], job.spec.size
        )
        self.next_chunk = first_chunk
        loader = _image_loader(dataset, batch_size_for(job.spec, job.device), job.device)
        self.batches: Iterator = iter(loader)
        if loader.num_workers == 0 and _PREFETCH_BATCHES:
            self.batches = _Prefetched(self.batches, _PREFETCH_BATCHES)

    def close(self) -> None:
        if isinstance(self.batches, _Prefetched):
            self.batches.close()


_END = object()


class _Prefetched:
    """Reads and decodes the next batches on a thread while the encoder runs on this one.

    Without decode worker processes (a 2-core CPU, where their start-up and IPC cost more
    than they save) decoding would sit between forwards. A CNN forward leaves cores idle
    between its many small ops, and file reads, sha256 and Pillow's decode and resize release
    the GIL, so a thread hides most of the decode time in those gaps.
    """

    def __init__(self, source: Iterator, depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(source,), name="image-decode", daemon=True)
        self._thread.start()

    def _fill(self, source: Iterator) -> None:
        try:
            for item in source:
                if not self._put((item, None)):
                    return
            self._put((_END, None))
        except BaseException as err:  # handed to the consumer, raised there
            self._put((None, err))

    def _put(self, entry: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> _Prefetched:
        return self

    def __next__(self) -> Any:
        item, err = self._queue.get()
        if err is not None:
            raise err
        if item is _END:
            self._queue.put((_END, None))  # a later next() ends too, it does not hang
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop decoding ahead (the consumer has moved on or failed)."""
        self._stop.set()


def _encode_image_chunk(job: Extraction, index: int) -> tuple[np.ndarray, np.ndarray, float]:
    if job.feed is None or job.feed.next_chunk != index:
        job.drop_feed()
        job.feed = _ImageFeed(job, index)
    slots = job.chunk(index)

    def fail_on_changed(outcome: np.ndarray) -> None:
        changed = np.flatnonzero(outcome == _CHANGED)
        if len(changed):
            job.drop_feed()
            _raise_changed(job, slots[changed])

    vectors, outcome, forward = encode_image_batches(
        job.encoder,
        job.feed.batches,
        len(slots),
        job.device,
        fail_on_changed,  # type: ignore[arg-type]
    )
    job.feed.next_chunk = index + 1
    return vectors, outcome == _DECODED, forward


def _raise_changed(job: Extraction, slots: np.ndarray) -> None:
    """Images whose bytes are not the ones align hashed: their key would be a lie."""
    column = job.contents.first_cell[int(slots[0])][1]
    raise DataError(
        "image file is missing or changed since align; rerun align",
        file=str(job.contents.sources[int(slots[0])]),
        rows=[job.contents.first_cell[int(s)][0] for s in slots],
        column=column,
    )


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


def prepare_encoder(encoder: TextEncoder | ImageEncoder, device: torch.device) -> TextEncoder | ImageEncoder:
    """On the device; CNNs in channels_last (~2x faster on CPU too: 40 vs 18 images/s, 2 cores)."""
    if isinstance(encoder, ImageEncoder):
        return encoder.to(device=device, memory_format=torch.channels_last)
    return encoder.to(device)


def configure_threads(device: torch.device) -> None:
    """Intra-op threads for the forward: the cores not lent to image decoding."""
    reserved = _decode_workers(device) if device.type == "cpu" else 0
    torch.set_num_threads(max(1, _cores() - reserved))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed image size: pick the fastest kernels once


def batch_size_for(spec: EncoderSpec, device: torch.device) -> int:
    # A GPU idles below a few hundred rows per batch; a CPU gains nothing from more.
    return max(spec.batch_size, _CUDA_MIN_BATCH) if device.type == "cuda" else spec.batch_size


def _decode_workers(device: torch.device) -> int:
    """Processes decoding images beside the main one.

    On a CPU decoding costs a few percent of a CNN forward: one worker, and none on 1-2
    cores, where its start-up and IPC cost more than it saves. A GPU consumes images far
    faster than one core decodes them, so there most cores decode.
    """
    cores = _cores()
    if device.type == "cuda":
        return max(1, min(12, cores - 2))
    return 1 if cores >= 4 else 0


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def autocast_for(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
