"""Audio: sound files under data.audio_root, decoded with libsndfile and encoded by an audio CNN.

A clip becomes mono float32 at the encoder's sample rate, cut into the encoder's windows;
the window embeddings are averaged into one vector per clip. Work per file is bounded by
`encoders.audio.max_seconds`: a longer clip contributes that many seconds of windows spread
evenly over its whole length, read with seeks, so a 3-hour recording costs what a
`max_seconds` clip costs and is never held in memory whole.

Formats: WAV (and its 64-bit variants), FLAC, OGG/Vorbis, AIFF, CAF, and MP3 where the
installed libsndfile decodes it (1.1 and later). Anything else, an empty or truncated file,
zero samples, NaN or infinite samples, or more than 64 channels is a bad file: absent and
counted, or an error with `data.on_bad_audio: error`.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile
import torch
from scipy.signal import resample_poly
from torch import nn

from tasks.device import autocast_for, batch_size_on, to_device
from tasks.modalities import register
from tasks.modalities.files import FileModality, Prefetched, file_sha256, raise_changed

if TYPE_CHECKING:
    from modelzoo.encoders.base import AudioEncoder
    from tasks.features.extract import Extraction

AUDIO_DECODE = "tasks.modalities.audio/v1"  # bump when the samples produced for a file change
FORMATS = ("WAV", "WAVEX", "RF64", "W64", "FLAC", "OGG", "MP3", "AIFF", "CAF")
MAX_CHANNELS = 64
_PROBE_SECONDS = 5.0  # align decodes this much of each file to prove it decodes
_PREFETCH_CLIPS = 8


class AudioDecodeError(Exception):
    """A sound file that cannot become samples; the message says why."""


@dataclass(frozen=True)
class Framing:
    """How clips are cut: the encoder's rate and window, and the budget per clip."""

    sample_rate: int
    window_samples: int
    peak_normalise: bool
    max_seconds: int

    @property
    def max_windows(self) -> int:
        return max(1, int(self.max_seconds * self.sample_rate // self.window_samples))


class AudioModality(FileModality):
    name = "audio"
    order = 3
    input_version = AUDIO_DECODE
    noun = "audio file"

    def size_of(self, config: Any) -> int:
        return int(config.max_seconds)

    def preprocessing(self, size: int) -> dict[str, Any]:
        return {"max_seconds": size}

    def load_encoder(self, model: str, size: int) -> nn.Module:
        from modelzoo.encoders.loading import load_audio_encoder  # only when encoding

        return load_audio_encoder(model)

    def probe(self, data: bytes) -> str | None:
        return _why_unusable(io.BytesIO(data), len(data), data[:12])

    def probe_file(self, path: Path) -> tuple[str, str | None]:
        """Hashed in blocks and decoded in part (head and tail): a 3-hour file is never read whole."""
        with path.open("rb") as handle:
            head = handle.read(12)
        return file_sha256(path), _why_unusable(path, path.stat().st_size, head)

    def encode_chunk(self, job: Extraction, index: int) -> tuple[np.ndarray, np.ndarray, float]:
        encoder: AudioEncoder = job.encoder  # type: ignore[assignment]
        framing = Framing(encoder.sample_rate, encoder.window_samples, encoder.peak_normalise, job.spec.size)
        slots = job.chunk(index)
        decoded = _decoded(job, slots, framing)
        clips: Any = Prefetched(decoded, _PREFETCH_CLIPS) if _PREFETCH_CLIPS else decoded
        out = np.zeros((len(slots), encoder.dim), dtype=np.float32)
        ok = np.zeros(len(slots), dtype=bool)
        pending: list[tuple[int, np.ndarray]] = []  # (position in chunk, windows)
        forward = 0.0
        batch = batch_size_on(job.device, job.spec.batch_size)
        try:
            for position, windows in clips:
                if windows is None:
                    continue
                pending.append((position, windows))
                if sum(len(w) for _, w in pending) >= batch:
                    forward += _encode_clips(encoder, pending, out, ok, job.device)
                    pending = []
            if pending:
                forward += _encode_clips(encoder, pending, out, ok, job.device)
        finally:
            clips.close()  # stops the decode thread, if any
        return out, ok, forward


def _decoded(job: Extraction, slots: np.ndarray, framing: Framing) -> Iterator[tuple[int, np.ndarray | None]]:
    """(position, (n, window_samples) windows or None when the file does not decode), in order.

    The file's digest is checked first: a file edited since align would otherwise store its
    new vector under the old content key.
    """
    for position, slot in enumerate(slots):
        path = job.contents.sources[slot]
        try:
            if bytes.fromhex(file_sha256(path)) != job.contents.keys[slot]:
                raise_changed(job.contents, np.array([slot]), "audio file")
        except OSError:
            raise_changed(job.contents, np.array([slot]), "audio file")
        try:
            yield position, clip_windows(path, framing)
        except (AudioDecodeError, soundfile.LibsndfileError, RuntimeError, ValueError):
            yield position, None


def _encode_clips(
    encoder: AudioEncoder,
    clips: list[tuple[int, np.ndarray]],
    out: np.ndarray,
    ok: np.ndarray,
    device: torch.device,
) -> float:
    """Encode every window of these clips in one batch and average each clip's windows."""
    windows = np.concatenate([w for _, w in clips])  # (W, window_samples)
    features = {name: to_device(t, device) for name, t in encoder.featurize(windows).items()}
    began = time.perf_counter()
    with torch.inference_mode(), autocast_for(device):
        vectors = encoder(**features).float().cpu().numpy()  # (W, dim)
    seconds = time.perf_counter() - began
    start = 0
    for position, clip in clips:
        out[position] = vectors[start : start + len(clip)].mean(axis=0)
        ok[position] = True
        start += len(clip)
    return seconds


def clip_windows(path: Path, framing: Framing) -> np.ndarray:
    """(n, window_samples) float32 windows of a clip, mono at the encoder's rate.

    A clip up to `max_seconds` long is cut into consecutive windows (the last zero-padded);
    a longer one gives `max_windows` windows at evenly spaced offsets over its whole length.
    """
    with soundfile.SoundFile(path) as sound:
        _check_header(sound)
        rate = sound.samplerate
        span = math.ceil(framing.window_samples * rate / framing.sample_rate)  # source frames per window
        count = max(1, math.ceil(sound.frames / span))
        if count <= framing.max_windows:
            pieces = [_mono(sound.read(sound.frames, "float32", always_2d=True))]
        else:
            count = framing.max_windows
            starts = np.linspace(0, sound.frames - span, count).astype(np.int64)
            pieces = []
            for start in starts:
                sound.seek(int(start))
                pieces.append(_mono(sound.read(span, "float32", always_2d=True)))
    windows: list[np.ndarray] = []
    for piece in pieces:
        _check_samples(piece)
        samples = _resample(piece, rate, framing.sample_rate)
        windows.extend(_cut(samples, framing.window_samples))
    stacked = np.stack(windows).astype(np.float32)  # (n, window_samples)
    if framing.peak_normalise:
        peak = float(np.abs(stacked).max())
        if peak > 0:
            stacked /= peak
    return stacked


def _mono(frames: np.ndarray) -> np.ndarray:
    return frames.mean(axis=1, dtype=np.float32) if frames.size else np.zeros(0, dtype=np.float32)


def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return samples
    common = math.gcd(rate, target)
    return resample_poly(samples, target // common, rate // common).astype(np.float32)


def _cut(samples: np.ndarray, window: int) -> list[np.ndarray]:
    count = max(1, math.ceil(len(samples) / window))
    padded = np.zeros(count * window, dtype=np.float32)
    padded[: len(samples)] = samples
    return list(padded.reshape(count, window))


def _check_header(sound: soundfile.SoundFile) -> None:
    if sound.format not in FORMATS:
        raise AudioDecodeError(f"{sound.format} audio is not read (formats: {', '.join(FORMATS)})")
    if sound.frames <= 0:
        raise AudioDecodeError("the file holds no samples")
    if not 1 <= sound.channels <= MAX_CHANNELS:
        raise AudioDecodeError(f"{sound.channels} channels is more than the {MAX_CHANNELS} we mix")
    if sound.samplerate <= 0:
        raise AudioDecodeError(f"sample rate {sound.samplerate} Hz")


def _check_samples(samples: np.ndarray) -> None:
    if samples.size and not np.isfinite(samples).all():
        raise AudioDecodeError("the samples hold NaN or infinite values")


def _why_unusable(source: Path | io.BytesIO, size: int, head: bytes) -> str | None:
    """Why a sound file cannot be used (`head`: its first 12 bytes), or None when it decodes.

    Decodes the first seconds and the last second, not the whole file.
    """
    if size == 0:
        return "file is empty"
    if _riff_truncated(head, size):
        return _TRUNCATED
    try:
        with soundfile.SoundFile(source) as sound:
            _check_header(sound)
            _check_samples(_head(sound))
            _check_end(sound)
    except AudioDecodeError as err:
        return str(err)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as err:
        return _decoder_reason(err)
    return None


def _head(sound: soundfile.SoundFile) -> np.ndarray:
    return sound.read(min(sound.frames, int(_PROBE_SECONDS * sound.samplerate)), "float32")


def _check_end(sound: soundfile.SoundFile) -> None:
    """Read the last second too: a truncated file usually decodes fine until its end."""
    tail = min(sound.frames, sound.samplerate)
    sound.seek(sound.frames - tail)
    samples = sound.read(tail, "float32")
    if len(samples) < tail:
        raise AudioDecodeError(f"truncated: {sound.frames} frames declared, the data ends sooner")
    _check_samples(samples)


_TRUNCATED = "truncated: the RIFF header declares more bytes than the file holds"


def _riff_truncated(head: bytes, size: int) -> bool:
    """A WAV/RF64 cut short: libsndfile quietly reads what is there, so the header must be checked.

    Other containers (FLAC, OGG, MP3) fail to decode at the cut, which `_check_end` reads.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return False
    declared = int.from_bytes(head[4:8], "little") + 8
    return declared > size


def _decoder_reason(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    if "unknown format" in text.lower() or "format not recogni" in text.lower():
        return "not an audio file in a supported format"
    return f"cannot be decoded ({text})"


register(AudioModality())
