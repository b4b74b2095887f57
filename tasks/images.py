"""Decoding user images safely: any file either becomes RGB pixels or a clear reason it cannot.

Real image folders hold CMYK scans, palette GIFs with transparency, 16-bit PNGs, one-pixel
spacers, 20,000-pixel panoramas and files that are not images at all. The encoders want
(size, size, 3) uint8 RGB, so every mode is converted here in one place, and the two checks
that protect the process come first:

- only common raster formats are opened: Pillow would otherwise hand an `.eps` renamed to
  `.jpg` to Ghostscript, a separate program we must not run on a file we only meant to read;
- nothing bigger than MAX_DECODED_PIXELS is decoded. Huge JPEGs are decoded at 1/2, 1/4 or
  1/8 scale inside libjpeg (still at least `size` pixels a side), other formats that large
  are refused, so a crafted header cannot make us allocate gigabytes.

Memory follows what the encoder needs and the bytes a file holds, never what a header
claims (issue 23): a file over MAX_FILE_BYTES is refused unread; a header declaring more
pixels than its format could pack into the file's bytes is refused before any pixel is
allocated (a 109-byte PNG claiming 8192 x 8192 once decoded to 1 GB of black); decodes
read from the file, never from a copy of it; and the big decodes of a process share one
budget of MAX_DECODED_PIXELS, so threads decoding side by side cannot multiply the peak.

Align calls `probe` to judge every file once (counted in its summary, or an error with
`data.on_bad_image: error`); extraction calls `load_square_rgb` for the pixels.
"""

from __future__ import annotations

import io
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.errors import DataError

MAX_DECODED_PIXELS = 64 * 1024 * 1024  # 8192 x 8192; 192 MB as RGB
# The largest image we decode stored raw at 8 bytes a pixel (16-bit RGBA, the densest layout
# of these formats): a bigger file holds more than any image we would decode, and is refused
# before it is read or hashed (a sparse 2.5 GB `.jpg` once took align to 3.3 GB).
MAX_FILE_BYTES = 8 * MAX_DECODED_PIXELS  # 512 MiB
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
DECODE_VERSION = 1  # bump when the pixels produced for the same file change (feature caches)
_MAX_INTERMEDIATE = 16  # resize-then-crop while the resized image is at most 16 crops big
_PROBE_SIZE = 32  # probing decodes JPEGs at 1/8 scale: every byte is still entropy-decoded
_WHITE = (255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_SMALL_DECODE = 4 * 1024 * 1024  # pixels (16 MB as RGBX): smaller decodes skip the shared budget
_CONVERT_BLOCK = 1 << 20  # 16-bit and float pixels rescaled this many at a time (8 MB of float64)
# The most pixels one byte of a file can hold, by format; a header declaring more is refused.
#   PNG: deflate expands at most 1032:1 (a 258-byte match in two 1-bit codes), and a pixel
#        takes _PNG_BITS of the inflated rows (1 where the raw mode is not known);
#   JPEG: every 8 x 8 block of the first component costs at least one Huffman-coded bit
#         (arithmetic coding, which can go below, is all but unused);
#   GIF: an LZW code emitting L pixels is at least log2(L) bits wide, L <= 4096: 4096 / 12 bits;
#   BMP: an RLE run is 2 bytes for at most 255 pixels; PPM: a raw PBM pixel is 1 bit.
# TIFF and WebP have no such bound (ZSTD, VP8L): MAX_DECODED_PIXELS and the budget hold them.
_DEFLATE_MAX_RATIO = 1032
_PIXELS_PER_BYTE = {"JPEG": 512, "MPO": 512, "GIF": 2731, "BMP": 128, "PPM": 8}
# Bits a PNG pixel takes in the inflated rows, by Pillow's raw mode (its IHDR depth and colour)
_PNG_BITS = {
    "1": 1,
    "P;1": 1,
    "L;2": 2,
    "P;2": 2,
    "L;4": 4,
    "P;4": 4,
    "L": 8,
    "P": 8,
    "I;16B": 16,
    "LA": 16,
    "RGB": 24,
    "LA;16B": 32,
    "RGBA": 32,
    "RGB;16B": 48,
    "RGBA;16B": 64,
}

T = TypeVar("T")

# Pillow's own bomb guard refuses a 20,000 x 20,000 JPEG before we can ask for a scaled
# decode; it is a process-wide setting, so it is lifted only while a header is parsed.
_LIMIT_LOCK = threading.Lock()


class ImageDecodeError(DataError):
    """An image file that cannot become pixels; `reason` says why, the message names the file."""

    def __init__(self, reason: str, path: str | Path | None) -> None:
        self.reason = reason
        super().__init__(reason, file=None if path is None else str(path))


# A file by path, an open binary file at its start (extraction decodes the handle it just
# hashed), or bytes already in memory.
Source = str | Path | bytes | BinaryIO


def probe(source: Source) -> str | None:
    """Why the file cannot be used as an image, or None when it decodes."""
    try:
        _decoded(source, _PROBE_SIZE, lambda rgb: None, scaled=True)
    except ImageDecodeError as err:
        return err.reason
    return None


def load_square_rgb(source: Source, size: int) -> np.ndarray:
    """(size, size, 3) uint8: shorter side scaled to `size`, centre-cropped (ImageNet's eval view).

    Raises ImageDecodeError (naming the file, when given a path) if it cannot be decoded.
    """
    return _decoded(source, size, lambda rgb: square_rgb(rgb, size))


def square_rgb(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to `size`, then centre-crop.

    A very elongated image (a 1 x 20,000 strip would become 224 x 4,480,000 first) is
    instead resized straight from the matching source box: only size x size pixels are
    produced, and they differ from the two-step result by at most 1 in 255 (rounding).
    Ordinary shapes keep the two-step path, so their pixels match earlier releases exactly.
    """
    width, height = image.size
    scale = size / min(width, height)
    full_w, full_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (full_w - size) // 2, (full_h - size) // 2
    if full_w * full_h <= _MAX_INTERMEDIATE * size * size:
        resized = image.resize((full_w, full_h), Image.Resampling.BILINEAR)
        return np.array(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
    box = (
        left * width / full_w,
        top * height / full_h,
        (left + size) * width / full_w,
        (top + size) * height / full_h,
    )
    resized = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.array(resized, dtype=np.uint8)  # (size, size, 3), a writable copy


def _decoded(source: Source, size: int, use: Callable[[Image.Image], T], scaled: bool = False) -> T:
    """`use` applied to the RGB pixels, while they exist: no copy outlives the decode.

    JPEGs decode at reduced scale when huge, or always when `scaled` (probing). Every bound is
    checked on the header, before a pixel is allocated.
    """
    path = Path(source) if isinstance(source, (str, Path)) else None
    try:
        with _open(source, path) as (image, length):
            width, height = image.size
            _refuse_more_than_bytes_hold(image, length, path)
            if (scaled or width * height > MAX_DECODED_PIXELS) and image.format in ("JPEG", "MPO"):
                image.draft(None, (size, size))  # libjpeg's DCT scaling, before any pixel is read
            pixels = image.size[0] * image.size[1]
            if pixels > MAX_DECODED_PIXELS:
                raise ImageDecodeError(
                    f"{width} x {height} pixels is more than the {MAX_DECODED_PIXELS:,} we decode",
                    path,
                )
            with _BUDGET.held(pixels):
                image.load()
                return use(_to_rgb(image))
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError("file not found", path) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not an image in a supported format ({', '.join(FORMATS)})", path) from None
    except Exception as err:  # noqa: BLE001 - decoders raise OSError, ValueError, SyntaxError, ...
        raise ImageDecodeError(f"cannot be decoded ({type(err).__name__}: {err})", path) from None


@contextmanager
def _open(source: Source, path: Path | None) -> Iterator[tuple[Image.Image, int]]:
    """The image, header parsed and no pixel read, and the file's length in bytes.

    An empty file, or one over MAX_FILE_BYTES, is refused before Pillow sees it.
    """
    opened: Path | BinaryIO
    if isinstance(source, bytes):
        opened, length = io.BytesIO(source), len(source)
    elif path is not None:
        opened, length = path, path.stat().st_size
    else:
        opened, length = source, _remaining(source)  # type: ignore[arg-type]
    if length == 0:
        raise ImageDecodeError("file is empty", path)
    if length > MAX_FILE_BYTES:
        raise ImageDecodeError(f"{length:,} bytes is more than the {MAX_FILE_BYTES:,} accepted", path)
    with _LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            image = Image.open(opened, formats=FORMATS)
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    with image:
        yield image, length


def _remaining(handle: BinaryIO) -> int:
    """Bytes from the handle's position to its end; the position is kept."""
    try:
        return os.fstat(handle.fileno()).st_size - handle.tell()
    except (AttributeError, OSError, io.UnsupportedOperation):  # no file descriptor (BytesIO)
        start = handle.tell()
        end = handle.seek(0, io.SEEK_END)
        handle.seek(start)
        return end - start


def _refuse_more_than_bytes_hold(image: Image.Image, length: int, path: Path | None) -> None:
    """A header declaring more pixels than its format can pack into `length` bytes is a lie
    (a truncated or crafted file): decoding it would allocate for pixels that are not there."""
    width, height = image.size
    if image.format == "PNG":
        rawmode = image.tile[0].args if image.tile else None
        bits = _PNG_BITS.get(rawmode, 1) if isinstance(rawmode, str) else 1
        most = length * _DEFLATE_MAX_RATIO * 8 // bits
    elif image.format in _PIXELS_PER_BYTE:
        most = length * _PIXELS_PER_BYTE[image.format]
    else:
        return
    if width * height > most:
        raise ImageDecodeError(
            f"the header declares {width} x {height} pixels, more than {length:,} bytes of "
            f"{image.format} can hold (truncated or crafted)",
            path,
        )


class _PixelBudget:
    """Pixels that big decodes in this process may hold at once; waiters are served in turn.

    Probing and decoding run on a thread per core: without a shared budget, each thread
    decoding an 8192 x 8192 image at the same moment would multiply the peak (about 0.5 GB
    each). Decodes under _SMALL_DECODE pixels, nearly every photo, never wait.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.reset()

    def reset(self) -> None:
        """Nothing held: also in a forked decode worker, which would inherit the parent's holds."""
        self._used = 0
        self._turns: deque[object] = deque()
        self._changed = threading.Condition()

    @contextmanager
    def held(self, pixels: int) -> Iterator[None]:
        if pixels < _SMALL_DECODE:
            yield
            return
        pixels = min(pixels, self._limit)
        turn = object()
        with self._changed:
            self._turns.append(turn)
            self._changed.wait_for(lambda: self._turns[0] is turn and self._used + pixels <= self._limit)
            self._turns.popleft()
            self._used += pixels
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._used -= pixels
                self._changed.notify_all()


_BUDGET = _PixelBudget(MAX_DECODED_PIXELS)
os.register_at_fork(after_in_child=_BUDGET.reset)


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB whatever the mode: transparency over white, 16-bit and float rescaled.

    An RGB image is returned as is (the caller uses it before the file is closed).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in (*_SIXTEEN_BIT, "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image), mode == "F")).convert("RGB")
    if "A" in mode or "a" in mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _to_uint8(values: np.ndarray, fractions: bool) -> np.ndarray:
    """16-bit or 32-bit integer and float pixels onto 0..255.

    Pillow's own conversion clips at 255, which turns a 16-bit photo almost entirely white.
    Integers are read as 16-bit (the PNG/TIFF norm); float images (`fractions`) in [0, 1]
    as fractions of white; anything else is stretched from its own minimum to its maximum.
    Converted a block at a time: float64 copies of a whole 8192 x 8192 image took 2.7 GB.
    """
    flat = values.reshape(-1)
    low, high = _finite_range(flat)
    scale: Callable[[np.ndarray], np.ndarray]
    if fractions and 0 <= low and high <= 1:
        scale = lambda block: block * 255.0  # noqa: E731 - one expression per case
    elif 0 <= low and high <= 65535:
        scale = lambda block: block / 257.0  # noqa: E731
    elif high > low:
        scale = lambda block: (block - low) / (high - low) * 255.0  # noqa: E731
    else:
        return np.zeros(values.shape, dtype=np.uint8)
    out = np.empty(flat.shape, dtype=np.uint8)
    for start in range(0, flat.size, _CONVERT_BLOCK):
        scaled = scale(flat[start : start + _CONVERT_BLOCK].astype(np.float64))
        out[start : start + len(scaled)] = np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).round()
    return out.reshape(values.shape)


def _finite_range(flat: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values, (0, 0) when there are none; a block at a time."""
    low, high = np.inf, -np.inf
    for start in range(0, flat.size, _CONVERT_BLOCK):
        block = flat[start : start + _CONVERT_BLOCK].astype(np.float64)
        finite = block[np.isfinite(block)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    return (low, high) if low <= high else (0.0, 0.0)
