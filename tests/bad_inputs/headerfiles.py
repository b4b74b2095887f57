"""Files whose headers claim what their bytes do not hold, written byte by byte (issue 23).

A WAV is built from its fields, so a test can set any sample rate, channel count, RIFF size
or data-chunk size a header can carry; PNG and JPEG headers are patched to declare any
dimensions over a few bytes of real image data; a sparse file is gigabytes long on paper
and costs no disk.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

Writer = Callable[[Path], None]
UINT32 = 2**32 - 1


def wav_bytes(
    rate: int = 8000,
    frames: int = 800,
    channels: int = 1,
    data_size: int | None = None,
    riff_size: int | None = None,
) -> bytes:
    """A 16-bit PCM WAV of a 440 Hz tone; `data_size` / `riff_size` override what the header declares.

    Every field is written modulo 2**32, as the header's unsigned 32-bit fields hold it.
    """
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(frames) / max(rate, 1))
    payload = np.repeat((tone * 32767).astype("<i2")[:, None], channels, axis=1).tobytes()
    block = 2 * channels
    fmt = struct.pack(
        "<HHIIHH", 1, channels & 0xFFFF, rate & UINT32, (rate * block) & UINT32, block & 0xFFFF, 16
    )
    declared_data = len(payload) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", declared_data & UINT32) + payload
    declared_riff = len(body) if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", declared_riff & UINT32) + body


def wav(**fields: int | None) -> Writer:
    return lambda path: path.write_bytes(wav_bytes(**fields))  # type: ignore[arg-type]


def flac_claiming(total_samples: int) -> Writer:
    """A real FLAC whose STREAMINFO declares `total_samples` (36 bits) instead of its 800."""

    def write(path: Path) -> None:
        tone = (0.3 * np.sin(np.arange(800) / 5)).astype(np.float32)
        soundfile.write(path, tone, 8000, format="FLAC", subtype="PCM_16")
        data = bytearray(path.read_bytes())
        at = 8 + 13  # "fLaC", block header (4), then 13 bytes into STREAMINFO: 4 bits + 32 bits
        packed = int.from_bytes(data[at : at + 5], "big")
        packed = (packed & ~((1 << 36) - 1)) | (total_samples & ((1 << 36) - 1))
        data[at : at + 5] = packed.to_bytes(5, "big")
        path.write_bytes(bytes(data))

    return write


def cut_container(fmt: str) -> Writer:
    """A real AIFF / Wave64 / RF64 file with its last third cut off (its header unchanged)."""

    def write(path: Path) -> None:
        tone = (0.3 * np.sin(np.arange(8000) / 5)).astype(np.float32)
        soundfile.write(path, tone, 8000, format=fmt, subtype="PCM_16")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - len(data) // 3])

    return write


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int, colour: int = 2) -> bytes:
    """A PNG whose IHDR declares width x height (8-bit, `colour` type 0/2/4/6) over one row of data."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = b"\x00" * (1 + min(width, 4096) * channels)  # at most one real row, however wide the claim
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return _png(header, zlib.compress(row, 9))


def _png(header: bytes, data: bytes) -> bytes:
    """Signature, IHDR `header`, one IDAT of `data`, IEND."""
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def flat_png(side: int, bit_depth: int = 16, colour: int = 0) -> bytes:
    """A valid side x side PNG of one flat colour (mid grey at 16 bits): pixels compress away."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = b"\x00" + b"\x80" * (side * channels * bit_depth // 8)
    squeeze = zlib.compressobj(9)
    data = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", side, side, bit_depth, colour, 0, 0, 0)
    return _png(header, data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 16 x 16 baseline JPEG (about 600 bytes) whose frame header declares width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 40, 200)).save(buffer, format="JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    at = data.index(b"\xff\xc0") + 5  # SOF0: marker, length (2), precision (1), then height, width
    data[at : at + 4] = struct.pack(">HH", height, width)
    return bytes(data)


def sparse_jpeg(length: int) -> Writer:
    """A valid 8 x 8 JPEG followed by zeros up to `length` bytes: a hole, so no disk is used."""

    def write(path: Path) -> None:
        Image.new("RGB", (8, 8), (200, 30, 30)).save(path, format="JPEG", quality=90)
        with path.open("r+b") as handle:
            handle.truncate(length)

    return write
