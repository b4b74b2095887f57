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

Align calls `probe` to judge every file once (counted in its summary, or an error with
`data.on_bad_image: error`); extraction calls `load_square_rgb` for the pixels.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.errors import DataError

MAX_DECODED_PIXELS = 64 * 1024 * 1024  # 8192 x 8192; 192 MB as RGB
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
DECODE_VERSION = 1  # bump when the pixels produced for the same file change (feature caches)
_MAX_INTERMEDIATE = 16  # resize-then-crop while the resized image is at most 16 crops big
_PROBE_SIZE = 32  # probing decodes JPEGs at 1/8 scale: every byte is still entropy-decoded
_WHITE = (255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")

# Pillow's own bomb guard refuses a 20,000 x 20,000 JPEG before we can ask for a scaled
# decode; it is a process-wide setting, so it is lifted only while a header is parsed.
_LIMIT_LOCK = threading.Lock()


class ImageDecodeError(DataError):
    """An image file that cannot become pixels; `reason` says why, the message names the file."""

    def __init__(self, reason: str, path: str | Path | None) -> None:
        self.reason = reason
        super().__init__(reason, file=None if path is None else str(path))


Source = str | Path | bytes  # a file, or its bytes already read (extraction verifies digests)


def probe(source: Source) -> str | None:
    """Why the file cannot be used as an image, or None when it decodes."""
    try:
        _decode_rgb(source, _PROBE_SIZE, scaled=True)
    except ImageDecodeError as err:
        return err.reason
    return None


def load_square_rgb(source: Source, size: int) -> np.ndarray:
    """(size, size, 3) uint8: shorter side scaled to `size`, centre-cropped (ImageNet's eval view).

    Raises ImageDecodeError (naming the file, when given a path) if it cannot be decoded.
    """
    return square_rgb(_decode_rgb(source, size), size)


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


def _decode_rgb(source: Source, size: int, scaled: bool = False) -> Image.Image:
    """RGB pixels; JPEGs decode at reduced scale when huge, or always when `scaled` (probing)."""
    path = None if isinstance(source, bytes) else Path(source)
    try:
        with _open(source) as image:
            width, height = image.size
            if (scaled or width * height > MAX_DECODED_PIXELS) and image.format in ("JPEG", "MPO"):
                image.draft(None, (size, size))  # libjpeg's DCT scaling, before any pixel is read
            if image.size[0] * image.size[1] > MAX_DECODED_PIXELS:
                raise ImageDecodeError(
                    f"{width} x {height} pixels is more than the {MAX_DECODED_PIXELS:,} we decode",
                    path,
                )
            image.load()
            return _to_rgb(image)
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError("file not found", path) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not an image in a supported format ({', '.join(FORMATS)})", path) from None
    except Exception as err:  # noqa: BLE001 - decoders raise OSError, ValueError, SyntaxError, ...
        raise ImageDecodeError(f"cannot be decoded ({type(err).__name__}: {err})", path) from None


@contextmanager
def _open(source: Source) -> Iterator[Image.Image]:
    if isinstance(source, bytes):
        if not source:
            raise ImageDecodeError("file is empty", None)
        opened: Path | io.BytesIO = io.BytesIO(source)
    else:
        opened = Path(source)
        if opened.stat().st_size == 0:
            raise ImageDecodeError("file is empty", opened)
    with _LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            image = Image.open(opened, formats=FORMATS)
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    with image:
        yield image


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB whatever the mode: transparency over white, 16-bit and float rescaled."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
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
    """
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if fractions and 0 <= low and high <= 1:
        scaled = values * 255.0
    elif 0 <= low and high <= 65535:
        scaled = values / 257.0
    else:
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).round().astype(np.uint8)
