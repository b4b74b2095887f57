"""Checksums for the files the caches read back: damage (bit rot, a zeroed or cut-short file) shows.

Every cache here is a memo of something recomputable, so a damaged entry only has to be
noticed: it is then rebuilt, never used. CRC-32 is enough for that. It catches every
changed byte and every burst of damage up to 32 bits long, and a zeroed or truncated file
with certainty 1 - 2^-32; zlib computes it at about 3.6 GB/s on one core of the reference
CPU (blake2b: 0.8 GB/s, SHA-256: 1.2 GB/s), so checking a decoded feature copy before each
stage uses it costs a fraction of decoding it again. It is no defence against someone who
forges a file on purpose: the caches are the user's own files, as the source data is.
"""

from __future__ import annotations

import zlib
from pathlib import Path

CHUNK = 1 << 20  # bytes read at a time: all the memory checking a file takes


def crc32_of(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32 of `data`, continuing from `crc`."""
    return zlib.crc32(data, crc)


def file_crc32(path: Path) -> tuple[int, int]:
    """(size in bytes, CRC-32) of a whole file, read CHUNK bytes at a time."""
    crc, size = 0, 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            crc = zlib.crc32(view[:count], crc)
            size += count
    return size, crc


def stamp(crc: int) -> str:
    """A CRC as recorded in JSON: 8 hex digits."""
    return f"{crc:08x}"
