"""Audio: sound files under data.audio_root, decoded with libsndfile and encoded by an audio CNN.

A clip becomes mono float32 at the encoder's sample rate, cut into the encoder's windows;
the window embeddings are averaged into one vector per clip. Work per file is bounded by
`encoders.audio.max_seconds`: a longer clip contributes that many seconds of windows spread
evenly over its whole length, read with seeks, so a 3-hour recording costs what a
`max_seconds` clip costs and is never held in memory whole.

Formats: WAV (and its 64-bit variants), FLAC, OGG/Vorbis, AIFF, CAF, and MP3 where the
installed libsndfile decodes it (1.1 and later). Anything else, an empty or truncated file,
zero samples, NaN or infinite samples, more than 64 channels, or a sample rate outside
MIN_SAMPLE_RATE..MAX_SAMPLE_RATE is a bad file: absent and counted, or an error with
`data.on_bad_audio: error`.

Work and memory follow the encoder's needs and the bytes present, never a header's claims
(issue 23): the rate is bounded, so one window never spans more than MAX_SAMPLE_RATE /
the encoder's rate source frames; a header declaring more samples than the file's bytes
hold is truncated; frames are read in blocks and mixed to mono as they come, so channels
never multiply memory; and the resampling ratio's terms are bounded (`_ratio`). A WAV
claiming 2,147,483,647 Hz once passed align and then asked `_resample` for 320 GiB.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import numpy as np
import soundfile
import torch
from pydantic import Field, field_validator
from torch import nn

from tasks.device import autocast_for, batch_size_on, to_device
from tasks.modalities import register
from tasks.modalities.base import known_encoder
from tasks.modalities.files import FileModality, Prefetched, file_sha256, raise_changed
from tasks.strict import Strict

if TYPE_CHECKING:
    from modelzoo.encoders.base import AudioEncoder
    from tasks.encode_job import EncodeJob as Extraction

log = logging.getLogger(__name__)

# v2: resampling ratios with a term over _MAX_RATIO_TERM are approximated (`_ratio`)
AUDIO_DECODE = "tasks.modalities.audio/v2"  # bump when the samples produced for a file change
FORMATS = ("WAV", "WAVEX", "RF64", "W64", "FLAC", "OGG", "MP3", "AIFF", "CAF")
MAX_CHANNELS = 64
# Below 1 kHz a file holds nothing above 500 Hz, and no recorder or codec writes such rates
# (the lowest in use are 4, 5.5125 and 8 kHz): it is a wrong header, and resampling it to
# the encoder's rate would multiply its samples by up to 48. Above 384 kHz (DXD's 352.8 and
# 384 kHz, the highest PCM rates audio software writes) every window reads more source
# frames than the encoder keeps, while nothing above its rate's Nyquist frequency survives.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
# Bytes per sample of the uncompressed encodings: their header's frame count must fit the file.
_PCM_BYTES = {
    "PCM_S8": 1,
    "PCM_U8": 1,
    "PCM_16": 2,
    "PCM_24": 3,
    "PCM_32": 4,
    "FLOAT": 4,
    "DOUBLE": 8,
    "ULAW": 1,
    "ALAW": 1,
}
_COMPRESSED = ("FLAC", "OGG", "MP3")  # their subtype names the decoded width, not the stored one
# A polyphase resampler's filter has about 20 * max(up, down) taps: 2**31 - 1 Hz to 44.1 kHz
# asked for 43 billion. Every standard rate reduces to terms of at most 1,280 (384 kHz to
# 44.1 kHz is 147/1280); other ratios are approximated within 0.013 % (a fifth of a cent).
_MAX_RATIO_TERM = 4096
_READ_FRAMES = 1 << 16  # frames read at a time: 16 MB at 64 channels, mixed to mono at once
_CHUNKS = 64  # chunks walked to find the samples' chunk; a real file has a handful
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


class AudioEncoderConfig(Strict):
    """`encoders.audio`."""

    model: str = "aisfx"  # or a Hugging Face audio model id / local directory (AST, wav2vec2, HuBERT)
    max_seconds: int = Field(30, ge=1, le=3600)  # per clip; a longer one is sampled over its length
    batch_size: int = Field(16, ge=1)  # windows per forward

    @field_validator("model")
    @classmethod
    def _resolvable(cls, value: str) -> str:
        from modelzoo.encoders.loading import hub_name_problem

        return known_encoder(hub_name_problem(AudioModality.name, value), value)


class AudioModality(FileModality):
    name = "audio"
    order = 3
    input_version = AUDIO_DECODE
    encoder_config = AudioEncoderConfig
    size_key = "max_seconds"
    noun = "audio file"
    probe_libraries = ("soundfile",)
    # Not fine-tunable: aisfx's conv blocks would split like a CNN's, but a clip's embedding is
    # the mean of up to max_seconds / 2.3 s windows, so a cached lower output would be a varying
    # stack of window maps and the top would need to pool windows per clip: not a declaration.
    fine_tuning = None

    def load_encoder(self, model: str, size: int) -> nn.Module:
        from modelzoo.encoders.loading import load_audio_encoder  # only when encoding

        return load_audio_encoder(model)

    def probe(self, path: Path) -> str | None:
        """Decoded in part (head and tail): a 3-hour file is never read whole."""
        return _why_unusable(path)

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
            windows = clip_windows(path, framing)
        except OSError:  # gone since its digest was checked
            raise_changed(job.contents, np.array([slot]), "audio file")
        except (AudioDecodeError, soundfile.LibsndfileError, RuntimeError, ValueError) as err:
            log.warning("audio file %s: %s; treated as missing", path, err)
            windows = None
        yield position, windows


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
    The header is judged again as align judged it: a file must not reach the resampler with
    a rate or a length align would have refused.
    """
    with _opened(path) as sound:
        rate = sound.samplerate
        span = math.ceil(framing.window_samples * rate / framing.sample_rate)  # source frames per window
        count = max(1, math.ceil(sound.frames / span))
        if count <= framing.max_windows:
            pieces = [_read_mono(sound, sound.frames)]
        else:
            count = framing.max_windows
            starts = np.linspace(0, sound.frames - span, count).astype(np.int64)
            pieces = []
            for start in starts:
                sound.seek(int(start))
                pieces.append(_read_mono(sound, span))
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


def _read_mono(sound: soundfile.SoundFile, frames: int) -> np.ndarray:
    """Up to `frames` frames from the current position, mixed to mono a block at a time.

    Reading them at once would allocate frames x channels floats up front, whatever the
    file then holds; mono blocks cost what is read, one channel's worth.
    """
    blocks: list[np.ndarray] = []
    left = frames
    while left > 0:
        block = sound.read(min(left, _READ_FRAMES), "float32", always_2d=True)
        if not len(block):
            break
        blocks.append(_mono(block))
        left -= len(block)
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return samples
    from scipy.signal import resample_poly  # 0.8 s to import: only where a clip needs it, not at params load

    up, down = _ratio(rate, target)
    return resample_poly(samples, up, down).astype(np.float32)


def _ratio(rate: int, target: int) -> tuple[int, int]:
    """(up, down): up / down is target / rate, approximated when a term would pass _MAX_RATIO_TERM."""
    common = math.gcd(rate, target)
    up, down = target // common, rate // common
    if max(up, down) <= _MAX_RATIO_TERM:
        return up, down
    if up >= down:  # the smaller over the larger, below 1: its best approximation keeps both small
        near = Fraction(down, up).limit_denominator(_MAX_RATIO_TERM)
        return near.denominator, max(1, near.numerator)
    near = Fraction(up, down).limit_denominator(_MAX_RATIO_TERM)
    return max(1, near.numerator), near.denominator


def _cut(samples: np.ndarray, window: int) -> list[np.ndarray]:
    count = max(1, math.ceil(len(samples) / window))
    padded = np.zeros(count * window, dtype=np.float32)
    padded[: len(samples)] = samples
    return list(padded.reshape(count, window))


@contextmanager
def _opened(path: Path) -> Iterator[soundfile.SoundFile]:
    """The sound file, open once its header passed every check (`_check_header`).

    Container sizes are read first (`_declares_more`): libsndfile quietly shortens a WAV
    whose header declares more bytes than the file holds, which would make a cut file look whole.
    """
    size = path.stat().st_size
    if size == 0:
        raise AudioDecodeError("file is empty")
    with path.open("rb") as handle:
        truncated = _declares_more(handle, size)
    if truncated is not None:
        raise AudioDecodeError(truncated)
    try:
        sound = soundfile.SoundFile(path)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as err:
        raise AudioDecodeError(_decoder_reason(err)) from None
    with sound:
        _check_header(sound, size)
        yield sound


def _check_header(sound: soundfile.SoundFile, size: int) -> None:
    """Refuse what the header says before a sample is read: work would follow its claims."""
    if sound.format not in FORMATS:
        raise AudioDecodeError(f"{sound.format} audio is not read (formats: {', '.join(FORMATS)})")
    if sound.frames <= 0:
        raise AudioDecodeError("the file holds no samples")
    if not 1 <= sound.channels <= MAX_CHANNELS:
        raise AudioDecodeError(f"{sound.channels} channels is more than the {MAX_CHANNELS} we mix")
    if not MIN_SAMPLE_RATE <= sound.samplerate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            f"the header's sample rate {sound.samplerate:,} Hz is outside the "
            f"{MIN_SAMPLE_RATE:,} to {MAX_SAMPLE_RATE:,} Hz of real recordings"
        )
    per_sample = _PCM_BYTES.get(sound.subtype) if sound.format not in _COMPRESSED else None
    if per_sample is not None and sound.frames * sound.channels * per_sample > size:
        raise AudioDecodeError(
            f"truncated: the header declares {sound.frames:,} frames of {sound.subtype}, "
            f"more than the file's {size:,} bytes hold"
        )


def _check_samples(samples: np.ndarray) -> None:
    if samples.size and not np.isfinite(samples).all():
        raise AudioDecodeError("the samples hold NaN or infinite values")


def _why_unusable(path: Path) -> str | None:
    """Why a sound file cannot be used, or None when it decodes.

    Decodes the first seconds and the last second, not the whole file, a block at a time.
    """
    try:
        with _opened(path) as sound:
            _check_head(sound)
            _check_end(sound)
    except AudioDecodeError as err:
        return str(err)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as err:
        return _decoder_reason(err)
    return None


def _check_head(sound: soundfile.SoundFile) -> None:
    wanted = min(sound.frames, int(_PROBE_SECONDS * sound.samplerate))
    if _check_blocks(sound, wanted) < wanted:
        raise _truncated(sound)


def _check_end(sound: soundfile.SoundFile) -> None:
    """Read the last second too: a truncated file usually decodes fine until its end."""
    tail = min(sound.frames, sound.samplerate)
    try:
        sound.seek(sound.frames - tail)
    except (soundfile.LibsndfileError, RuntimeError):  # a declared end past the data (FLAC, MP3)
        raise _truncated(sound) from None
    if _check_blocks(sound, tail) < tail:
        raise _truncated(sound)


def _truncated(sound: soundfile.SoundFile) -> AudioDecodeError:
    return AudioDecodeError(f"truncated: {sound.frames:,} frames declared, the data ends sooner")


def _check_blocks(sound: soundfile.SoundFile, frames: int) -> int:
    """Read up to `frames` frames a block at a time, checking each; the number read.

    A read that runs past the data stops the count (libsndfile raises there for FLAC).
    """
    read = 0
    while read < frames:
        try:
            block = sound.read(min(frames - read, _READ_FRAMES), "float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError):
            break
        if not len(block):
            break
        _check_samples(block)
        read += len(block)
    return read


_W64_RIFF = bytes.fromhex("72696666 2e91cf11 a5d628db 04c10000")
_W64_DATA = bytes.fromhex("64617461 f3acd311 8cd100c0 4f8edb8a")


@dataclass(frozen=True)
class _Layout:
    """How a container's chunks are laid out: where they start, id and size widths, byte order."""

    first: int  # offset of the first chunk, after the container's own header
    id_bytes: int
    size_bytes: int
    order: Literal["little", "big"]
    size_counts_header: bool  # Wave64 sizes include the chunk's own id and size
    align: int
    data: bytes  # the id of the chunk holding the samples


_RIFF = _Layout(12, 4, 4, "little", False, 2, b"data")
_AIFF = _Layout(12, 4, 4, "big", False, 2, b"SSND")
_W64 = _Layout(40, 16, 8, "little", True, 8, _W64_DATA)


def _declares_more(handle: BinaryIO, size: int) -> str | None:
    """Why a WAV, RF64, Wave64 or AIFF is cut short, or None.

    libsndfile quietly reads what is there when the container or its sample chunk declares
    more bytes than the file holds, so a truncated file would pass as a shorter whole one.
    FLAC, OGG and MP3 fail to decode at the cut, which `_check_end` reads; CAF refuses to open.
    """
    head = handle.read(24)
    if head[:4] == b"RF64" and head[8:12] == b"WAVE":  # its sizes are in the ds64 chunk
        declared, layout = 0, _RIFF
    elif head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        declared, layout = int.from_bytes(head[4:8], "little") + 8, _RIFF
    elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        declared, layout = int.from_bytes(head[4:8], "big") + 8, _AIFF
    elif head[:16] == _W64_RIFF and len(head) == 24:
        declared, layout = int.from_bytes(head[16:24], "little"), _W64
    else:
        return None
    if declared > size:
        return f"truncated: the header declares {declared:,} bytes, the file holds {size:,}"
    return _data_chunk_beyond(handle, size, layout)


def _data_chunk_beyond(handle: BinaryIO, size: int, layout: _Layout) -> str | None:
    """Walk the chunks; why the sample chunk (or RF64's ds64) overruns the file, or None."""
    header_bytes = layout.id_bytes + layout.size_bytes
    offset, data_size64 = layout.first, None
    for _ in range(_CHUNKS):
        handle.seek(offset)
        header = handle.read(header_bytes)
        if len(header) < header_bytes:
            return None  # no sample chunk: libsndfile says what is wrong
        kind = header[: layout.id_bytes]
        length = int.from_bytes(header[layout.id_bytes :], layout.order)
        body = length - header_bytes if layout.size_counts_header else length
        if kind == b"ds64":
            sizes = handle.read(16)
            riff_size64 = int.from_bytes(sizes[:8], "little")
            data_size64 = int.from_bytes(sizes[8:16], "little")
            if riff_size64 + 8 > size:
                return f"truncated: the header declares {riff_size64 + 8:,} bytes, the file holds {size:,}"
        elif kind == layout.data:
            if body == 0xFFFFFFFF and data_size64 is not None:
                body = data_size64
            held = size - offset - header_bytes
            if body > held:
                return f"truncated: the sample chunk declares {body:,} bytes, the file holds {held:,}"
            return None
        if body < 0:
            return None
        offset += header_bytes + body + (-body % layout.align)
    return None


def _decoder_reason(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    if "unknown format" in text.lower() or "format not recogni" in text.lower():
        return "not an audio file in a supported format"
    return f"cannot be decoded ({text})"


register(AudioModality())
