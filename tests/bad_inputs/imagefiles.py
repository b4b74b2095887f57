"""Real image files of every awkward kind, written with Pillow or byte by byte.

Each writer takes the target path. The two 20,000 x 20,000 images are built without ever
holding their pixels: the JPEG is encoded from a zero buffer the kernel never backs with
memory, and the PNG is written chunk by chunk with a streaming zlib compressor.
"""

from __future__ import annotations

import struct
import tempfile
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

Writer = Callable[[Path], None]
HUGE = 20_000


def rgb_jpeg(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (8, 8)) -> Writer:
    def write(path: Path) -> None:
        Image.new("RGB", size, colour).save(path, format="JPEG", quality=90)

    return write


def one_pixel(path: Path) -> None:
    Image.new("RGB", (1, 1), (10, 200, 30)).save(path, format="PNG")


def cmyk_jpeg(path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, format="JPEG")  # pure red in CMYK


def palette_with_transparency(path: Path) -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0])
    image.putpixel((0, 0), 1)
    image.save(path, format="PNG", transparency=0)  # index 0 (black) is fully transparent


def rgba_png(path: Path) -> None:
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(path, format="PNG")  # transparent black


def gray16_png(path: Path) -> None:
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(path, format="PNG")  # mid grey


def empty(path: Path) -> None:
    path.write_bytes(b"")


def not_an_image(path: Path) -> None:
    path.write_text("this is a text file with a .jpg name\n")


def postscript(path: Path) -> None:
    """EPS content under a .jpg name: Pillow would hand it to Ghostscript if allowed to."""
    path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")


def truncated_jpeg(path: Path) -> None:
    rgb_jpeg((1, 2, 3), (64, 64))(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_png(path: Path) -> None:
    """A PNG whose image data chunk fails its CRC."""
    Image.new("RGB", (16, 16), (90, 90, 90)).save(path, format="PNG")
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT") + 8
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def huge_jpeg(path: Path) -> None:
    zeros = np.zeros((HUGE, HUGE), dtype=np.uint8)  # calloc'd: untouched pages cost no memory
    Image.frombuffer("L", (HUGE, HUGE), zeros, "raw", "L", 0, 1).save(path, format="JPEG", quality=50)


def huge_png(path: Path) -> None:
    """A valid 1-bit greyscale PNG, 20,000 pixels a side, about 50 KB on disk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(6)
    rows = (b"\x00" * (1 + HUGE // 8)) * 100  # per row: filter byte + 8 pixels per byte
    compressed = b"".join(compressor.compress(rows) for _ in range(HUGE // 100)) + compressor.flush()
    header = struct.pack(">IIBBBBB", HUGE, HUGE, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", compressed) + chunk(b"IEND", b"")
    )


def once(writer: Writer) -> Writer:
    """The same file, generated on first use and copied afterwards (for the slow huge ones)."""

    @cache
    def content() -> bytes:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "image"
            writer(path)
            return path.read_bytes()

    def write(path: Path) -> None:
        path.write_bytes(content())

    return write
