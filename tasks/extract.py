"""Feature extraction: pretrained encoders turn text and images into fixed-size embeddings.

Work is batched under `torch.inference_mode`; duplicate texts are encoded once; texts are
sorted by length so each batch pads only to its own longest row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from modelzoo.encoders.base import ImageEncoder, ImagePreprocessing, TextEncoder
from tasks.align import ID, PRESENT, SPLIT
from tasks.tabular import TabularState, fit_tabular, transform_tabular

log = logging.getLogger(__name__)


def embed_texts(
    encoder: TextEncoder,
    texts: list[str],
    max_length: int,
    batch_size: int,
    device: torch.device,
    progress: bool = True,
) -> np.ndarray:
    """(N, dim) float32 embeddings; each distinct string is encoded once."""
    unique = sorted(set(texts), key=lambda t: (len(t), t))
    out = np.zeros((len(unique), encoder.dim), dtype=np.float32)
    encoder.to(device)
    with torch.inference_mode(), _autocast(device):
        for start in tqdm(range(0, len(unique), batch_size), desc="text batches", disable=not progress):
            batch = unique[start : start + batch_size]
            tokens = encoder.tokenize(batch, max_length)
            input_ids = tokens["input_ids"].to(device, non_blocking=True)  # (B, T)
            mask = tokens["attention_mask"].to(device, non_blocking=True)  # (B, T)
            out[start : start + len(batch)] = encoder(input_ids, mask).float().cpu().numpy()
    row_of = {text: i for i, text in enumerate(unique)}
    return out[[row_of[t] for t in texts]] if texts else out


class _ImageFiles(Dataset):
    """Decodes and resizes images in DataLoader workers; unreadable files yield ok=False."""

    def __init__(self, paths: list[Path | None], prep: ImagePreprocessing) -> None:
        self.paths = paths
        self.size = prep.image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool]:
        path = self.paths[index]
        if path is None:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), False
        try:
            with Image.open(path) as image:
                pixels = _square_rgb(image, self.size)
        except Exception as err:  # noqa: BLE001 - any undecodable file is a missing image
            log.warning("image %s could not be decoded (%s); treated as missing", path, err)
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), False
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), True  # (3, S, S) uint8


def _square_rgb(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to `size` and centre-crop: the usual ImageNet evaluation view."""
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize(
        (max(size, round(width * scale)), max(size, round(height * scale))), Image.Resampling.BILINEAR
    )
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    return np.array(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)  # writable copy


def embed_images(
    encoder: ImageEncoder,
    paths: list[Path | None],
    batch_size: int,
    device: torch.device,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, dim) float32 embeddings and an (N,) mask of images that decoded."""
    prep = encoder.preprocessing
    workers = _decode_workers()
    loader = DataLoader(
        _ImageFiles(paths, prep),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255.0
    # channels_last is ~2x faster for this CNN on CPU too (measured 40 vs 18 images/s, 2 cores)
    encoder.to(device=device, memory_format=torch.channels_last)
    out = np.zeros((len(paths), encoder.dim), dtype=np.float32)
    ok_mask = np.zeros(len(paths), dtype=bool)
    start = 0
    with torch.inference_mode(), _autocast(device):
        for pixels, ok in tqdm(loader, desc="image batches", disable=not progress):
            images = (pixels.to(device, non_blocking=True).float() - mean) / std  # (B, 3, S, S)
            images = images.contiguous(memory_format=torch.channels_last)
            out[start : start + len(ok)] = encoder(images).float().cpu().numpy()
            ok_mask[start : start + len(ok)] = ok.numpy()
            start += len(ok)
    out[~ok_mask] = 0.0
    return out, ok_mask


def tabular_features(
    aligned: pd.DataFrame, categorical: list[str], numeric: list[str]
) -> tuple[np.ndarray, TabularState]:
    """The tabular block for every row, with state fitted on the train split only."""
    state = fit_tabular(aligned[aligned[SPLIT] == "train"], categorical, numeric)
    return transform_tabular(aligned, state), state


def text_blocks(
    aligned: pd.DataFrame,
    columns: list[str],
    embed: Callable[[list[str]], np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Embeddings per text column; absent text is not encoded and stays marked absent."""
    blocks: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for column in columns:
        mask = aligned[PRESENT + column].to_numpy(dtype=bool)
        texts = aligned.loc[mask, column].astype(str).tolist()
        vectors = embed(texts)
        block = np.zeros((len(aligned), vectors.shape[1]), dtype=np.float32)
        block[mask] = vectors
        blocks[f"text.{column}"], present[f"text.{column}"] = block, mask
    return blocks, present


def image_blocks(
    aligned: pd.DataFrame,
    columns: list[str],
    image_root: Path,
    embed: Callable[[list[Path | None]], tuple[np.ndarray, np.ndarray]],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Embeddings per image column; files that fail to decode become absent for that row."""
    blocks: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for column in columns:
        paths = [None if pd.isna(p) else image_root / str(p) for p in aligned[column]]
        vectors, ok = embed(paths)
        blocks[f"image.{column}"] = vectors
        present[f"image.{column}"] = ok & aligned[PRESENT + column].to_numpy(dtype=bool)
    return blocks, present


def row_ids(aligned: pd.DataFrame) -> np.ndarray:
    return aligned[ID].astype(str).to_numpy(dtype=object)


def _decode_workers() -> int:
    # One core keeps feeding the model; the rest decode. On 1-2 cores decoding inline is
    # cheaper than the worker processes' start-up and IPC.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
