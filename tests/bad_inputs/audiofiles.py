"""Real sound files of every awkward kind, written with soundfile or byte by byte.

Each writer takes the target path. The 3-hour clip is written block by block as FLAC, so
neither writing nor reading it holds it whole.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile

Writer = Callable[[Path], None]
RATE = 8000


def tone(frequency: float = 440.0, seconds: float = 1.0, rate: int = RATE, channels: int = 1) -> Writer:
    def write(path: Path) -> None:
        t = np.arange(int(seconds * rate)) / rate
        mono = 0.3 * np.sin(2 * np.pi * frequency * t)
        frames = np.repeat(mono[:, None], channels, axis=1) * np.linspace(1.0, 0.5, channels)
        soundfile.write(path, frames.astype(np.float32), rate, subtype="PCM_16")

    return write


def empty(path: Path) -> None:
    path.write_bytes(b"")


def not_audio(path: Path) -> None:
    path.write_text("this is a text file named like a sound\n")


def truncated(path: Path) -> None:
    """A WAV whose header declares a second of samples while only a tenth of it is there."""
    tone(seconds=1.0)(path)
    data = path.read_bytes()
    path.write_bytes(data[: 44 + RATE // 10 * 2])


def unsupported_codec(path: Path) -> None:
    """A RIFF/WAVE file whose fmt chunk names a codec (0x1234) no decoder knows."""
    payload = bytes(1600)
    fmt = struct.pack("<HHIIHH", 0x1234, 1, RATE, RATE * 2, 2, 16)
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(payload))
        + payload
    )
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def zero_samples(path: Path) -> None:
    soundfile.write(path, np.zeros((0, 1), dtype=np.float32), RATE, subtype="PCM_16")


def non_finite(value: float) -> Writer:
    def write(path: Path) -> None:
        samples = np.full(RATE // 2, 0.1, dtype=np.float32)
        samples[100:200] = value
        soundfile.write(path, samples, RATE, subtype="FLOAT")

    return write


def three_hours(path: Path) -> None:
    """3 hours at 8 kHz (86.4 million samples) as FLAC, written a minute at a time."""
    minute = (0.2 * np.sin(2 * np.pi * 440 * np.arange(60 * RATE) / RATE)).astype(np.float32)
    with soundfile.SoundFile(path, "w", RATE, 1, subtype="PCM_16", format="FLAC") as sound:
        for _ in range(180):
            sound.write(minute)
