"""Images: files under data.image_root, decoded to RGB and encoded by an ImageNet CNN.

Speed: decoded and resized in DataLoader workers where there are cores to spare; on a small
CPU (no workers) on every core between forwards (see decoded_batches); channels_last; on
CUDA also pinned memory, non-blocking copies and bf16 autocast.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modelzoo.encoders.image_finetune import ImageTop, splittable
from tasks.device import autocast_for, batch_size_on, cores, decode_workers
from tasks.errors import DataError
from tasks.images import DECODE_VERSION, MAX_FILE_BYTES, ImageDecodeError, load_square_rgb, probe
from tasks.modalities import register
from tasks.modalities.base import EmbeddedModality, FineTuning, known_encoder
from tasks.modalities.files import FileModality, raise_changed, read_verified
from tasks.strict import Strict

if TYPE_CHECKING:
    from modelzoo.encoders.base import ImageEncoder, ImagePreprocessing
    from modelzoo.encoders.split import FrozenLower
    from tasks.encode_job import EncodeJob as Extraction

log = logging.getLogger(__name__)

# Part of every image cache namespace: the label keeps the module's old path (it is now
# tasks/images.py) so that caches built before the move stay valid.
IMAGE_DECODE = f"tasks.features.images/v{DECODE_VERSION}"
DECODED, UNDECODABLE, CHANGED = 1, 0, -1  # how an image fared in a decode worker
BEST_BLOCKS = 1  # what `train.preset: best` fine-tunes when params leave the encoder frozen


class ImageFinetuneConfig(Strict):
    """End-to-end fine-tuning of the image encoder's last blocks together with the fusion head.

    The feature map entering those blocks is computed once per distinct image and cached, so
    an epoch runs only the blocks that learn (plus the head conv and pooling). `blocks: 0`
    keeps the encoder frozen. A block is one residual block (EfficientNet or ResNet), not a stage.
    """

    blocks: int = Field(0, ge=0, le=64)  # last residual blocks trained; 0 = frozen encoder
    lr: float = Field(1e-4, gt=0)  # encoder learning rate: well below the head's train.lr
    warmup: float = Field(0.1, ge=0, lt=1)  # share of steps with a linear LR warm-up
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)  # images per step
    patience: int = Field(2, ge=1)  # epochs without progress on val before it stops (see text's)


class ImageEncoderConfig(Strict):
    """`encoders.image`."""

    model: str = "efficientnet_lite0"
    image_size: int = Field(224, ge=32, le=1024)
    batch_size: int = Field(32, ge=1)
    finetune: ImageFinetuneConfig = ImageFinetuneConfig()

    @field_validator("model")
    @classmethod
    def _resolvable(cls, value: str) -> str:
        from modelzoo.encoders.loading import image_name_problem  # timm: only when validating

        return known_encoder(image_name_problem(value), value)


class ImageFineTuning(FineTuning):
    """The last N residual blocks learn; the feature map entering them is cached per distinct
    image file (float16), read, verified and decoded as extraction does."""

    top_class = ImageTop
    depth_key = "blocks"
    # EfficientNet-Lite0's last block and head conv on cached 7 x 7 maps: an epoch costs well
    # under one frozen extraction pass (bench/finetune.py), cheaper than the text layers.
    cost = 1
    cache_format = "float16-feature-maps/v1"
    _shape: tuple[int, ...] | None = None

    @classmethod
    def best_depth(cls, modality: EmbeddedModality, model: str) -> int:
        """Its last block where the layout allows it: a preset must not fail over a frozen encoder."""
        from modelzoo.encoders.loading import image_architecture  # timm: only when planning

        network = image_architecture(model)
        return BEST_BLOCKS if network is not None and splittable(network) else 0

    def plausible(self, array: np.ndarray, lower: FrozenLower) -> bool:
        if self._shape is None:  # (C, h, w), from a copy on the meta device (no arithmetic)
            size = self.encoder.preprocessing.image_size
            self._shape = tuple(
                copy.deepcopy(lower).to("meta")(torch.empty(1, 3, size, size, device="meta")).shape[1:]
            )
        return array.shape == self._shape

    def lower_batches(
        self, lower: FrozenLower, batches: list[list[tuple[str, Path]]], device: torch.device
    ) -> Iterator[list[torch.Tensor | None]]:
        paths = [path for batch in batches for _, path in batch]
        digests = [bytes.fromhex(digest) for batch in batches for digest, _ in batch]
        decoded = decoded_batches(
            paths, digests, self.encoder.preprocessing.image_size, self.section.batch_size, device
        )
        try:
            for batch in batches:
                pixels, status = next(decoded)  # (B, S, S, 3) uint8, (B,)
                outcomes = status.tolist()
                changed = [str(path) for (_, path), s in zip(batch, outcomes, strict=True) if s == CHANGED]
                if changed:
                    raise DataError(
                        f"{len(changed)} image files are missing or changed since align; rerun align",
                        file=changed[0],
                    )
                images = normalise_images(pixels, self.encoder.preprocessing, device)  # (B, 3, S, S)
                maps = lower(images).float().cpu()  # (B, C, h, w), float32 on every device
                yield [maps[i].half().contiguous() if s == DECODED else None for i, s in enumerate(outcomes)]
        finally:
            close_batches(decoded)

    def collate(self, outputs: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
        """(b, C, h, w) float32 in channels_last, the layout CNN kernels run fastest in."""
        batch = torch.stack(outputs).to(device=device, dtype=torch.float32)  # (b, C, h, w)
        return (batch.contiguous(memory_format=torch.channels_last),)


class ImageModality(FileModality):
    name = "image"
    order = 2
    input_version = IMAGE_DECODE
    encoder_config = ImageEncoderConfig
    size_key = "image_size"
    fine_tuning = ImageFineTuning
    noun = "image file"
    max_bytes = MAX_FILE_BYTES
    probe_libraries = ("pillow",)

    def load_encoder(self, model: str, size: int) -> nn.Module:
        from modelzoo.encoders.loading import load_image_encoder  # timm: only when encoding

        return load_image_encoder(model, size)

    def prepare_encoder(self, encoder: nn.Module, device: torch.device) -> nn.Module:
        """On the device in channels_last, the layout CNN kernels run fastest in, on CPU too."""
        return encoder.to(device=device, memory_format=torch.channels_last)

    def probe(self, path: Path) -> str | None:
        return probe(path)

    def encode_chunk(self, job: Extraction, index: int) -> tuple[np.ndarray, np.ndarray, float]:
        feed = job.feed
        if not isinstance(feed, _ImageFeed) or feed.next_chunk != index:
            self.release(job)
            feed = job.feed = _ImageFeed(job, index)
        slots = job.chunk(index)

        def fail_on_changed(outcome: np.ndarray) -> None:
            changed = np.flatnonzero(outcome == CHANGED)
            if len(changed):
                self.release(job)
                raise_changed(job.contents, slots[changed], self.noun)

        vectors, outcome, forward = encode_image_batches(
            job.encoder,  # type: ignore[arg-type]
            feed.batches,
            len(slots),
            job.device,
            fail_on_changed,
        )
        feed.next_chunk = index + 1
        return vectors, outcome == DECODED, forward

    def release(self, job: Extraction) -> None:
        if isinstance(job.feed, _ImageFeed):
            job.feed.close()
        job.feed = None


class _ImageFiles(Dataset):
    """Reads, verifies and decodes images (in DataLoader workers where there are any).

    Each file's bytes are checked against the key its embedding will be cached under: an
    image edited after align must not store its new vector under the old key.
    """

    def __init__(self, paths: list[Path], digests: list[bytes], size: int) -> None:
        self.paths = paths
        self.digests = digests
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        """(S, S, 3) uint8 pixels and how decoding went.

        Pixels stay numpy and HWC until the batch is on the device: torch ops here would each
        run on the intra-op thread pool, whose hand-offs cost more than these small copies,
        and an NHWC batch viewed as NCHW already is channels_last, so no transposing copy is made.
        """
        blank = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        path = self.paths[index]
        try:  # decodes the very handle it hashed, never a copy of the file (tasks/modalities/files.py)
            same, pixels = read_verified(
                path, self.digests[index], lambda file: load_square_rgb(file, self.size)
            )
        except ImageDecodeError as err:
            log.warning("image %s: %s; treated as missing", path, err.reason)
            return blank, UNDECODABLE
        return (pixels, DECODED) if same and pixels is not None else (blank, CHANGED)  # (S, S, 3) uint8


def _collate_images(items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, S, 3) uint8 and (B,) outcomes, stacked by numpy (see _ImageFiles.__getitem__)."""
    pixels = np.stack([pixels for pixels, _ in items])  # (B, S, S, 3)
    return torch.from_numpy(pixels), torch.from_numpy(np.array([status for _, status in items]))


def normalise_images(pixels: torch.Tensor, prep: ImagePreprocessing, device: torch.device) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 in channels_last, normalised for the encoder.

    One fused pass, pixel * (1 / std) + (-mean / std), instead of convert, subtract, divide:
    on a CPU this runs between forwards, and three passes over the batch took 4 % of the
    extraction (it differs from (pixel - mean) / std by at most 1 float32 ulp).
    """
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255.0
    nchw = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2)  # NHWC memory = channels_last
    images = torch.addcmul(-mean / std, nchw, 1.0 / std)  # float32, keeps the input's layout
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
    out[outcome != DECODED] = 0.0
    return out, outcome, forward


class _ImageFeed:
    """One DataLoader over the misses from some chunk on, consumed a chunk at a time.

    A loader per chunk would restart its decode workers for every chunk (task); this one
    keeps them decoding ahead across chunk boundaries.
    """

    def __init__(self, job: Extraction, first_chunk: int) -> None:
        slots = job.misses[first_chunk * job.chunk_rows :]
        self.next_chunk = first_chunk
        self.batches = decoded_batches(
            [job.contents.sources[s] for s in slots],
            [job.contents.keys[s] for s in slots],
            job.spec.size,
            batch_size_on(job.device, job.spec.batch_size),
            job.device,
        )

    def close(self) -> None:
        close_batches(self.batches)


def decoded_batches(
    paths: list[Path], digests: list[bytes], size: int, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(B, S, S, 3) uint8 pixels and (B,) outcomes (DECODED, UNDECODABLE, CHANGED) of `paths`, in order.

    Each file is verified against its digest and decoded: ahead of the caller in DataLoader
    workers where there are cores to spare, else on demand (`_decoded_on_demand`). Hand the
    iterator to close_batches when done with it early.
    """
    files = _ImageFiles(paths, digests, size)
    workers = decode_workers(device)
    if not workers:
        return _decoded_on_demand(files, batch_size)
    loader = DataLoader(
        files,
        batch_size=batch_size,
        collate_fn=_collate_images,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4,
    )
    return iter(loader)


def _decoded_on_demand(files: _ImageFiles, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch decoded when asked for, by a thread per core, while the forward waits.

    On a CPU too small for decode workers, a decode thread running beside the forward took
    the forward's cores in the middle of its parallel ops, which then waited for the
    preempted one: 10-15 % off the forward's rate for decoding that was then 4-8 % of its CPU
    time (flipkart's photos, bench/extract.py, before tasks.allocator sped the forward up).
    Decoding between forwards on every core (file reads, sha256, libjpeg and resizing release
    the GIL) costs only the decode.
    """
    with ThreadPoolExecutor(cores(), thread_name_prefix="decode") as pool:
        for start in range(0, len(files), batch_size):
            positions = range(start, min(start + batch_size, len(files)))
            yield _collate_images(list(pool.map(files.__getitem__, positions)))


def close_batches(batches: Iterator) -> None:
    """Stop decoding for an iterator from decoded_batches (its consumer moved on or failed)."""
    close = getattr(batches, "close", None)  # a generator; a DataLoader iterator ends with it
    if close is not None:
        close()


register(ImageModality())
