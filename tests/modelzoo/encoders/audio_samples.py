"""Test audio for the audio encoder tests: synthetic speech, music-like tones, coloured noise.

Speech comes from espeak-ng (a real formant synthesiser, so it has what speech has: voiced
harmonics shaped by formants, fricative noise, pitch movement and pauses); the rest is made
here with a seeded generator, so every clip is the same on every run. Also the caller-side
steps the AudioEncoder contract leaves to its user (peak normalisation, windowing, pooling
windows), done the plain way, and a held-out nearest-centroid score for separability.
"""

from __future__ import annotations

import shutil
import subprocess
from math import gcd
from pathlib import Path

import numpy as np
import torch
from scipy.io import wavfile
from scipy.ndimage import uniform_filter1d
from scipy.signal import hilbert, resample_poly

from modelzoo.encoders.base import AudioEncoder

# (text, voice, words per minute, pitch 0-99): different words, voices, speeds and pitches.
UTTERANCES = [
    ("hello there", "en", 150, 50),
    ("thank you very much", "en+f3", 170, 60),
    ("seven hundred and twelve", "en+m3", 140, 40),
    ("good morning everyone", "en-us", 160, 55),
    ("where is the railway station", "en+f2", 180, 70),
    ("please open the window", "en", 120, 30),
    ("I would like two green apples", "en+f4", 150, 80),
    ("what time is it now", "en-us+m7", 190, 45),
    ("the weather is lovely today", "en+f1", 130, 65),
    ("turn left at the corner", "en+m1", 200, 35),
    ("guten Morgen", "de", 150, 50),
    ("danke schön", "de+f3", 140, 70),
    ("eins zwei drei vier", "de+m2", 170, 40),
    ("wo ist der Bahnhof", "de+f2", 160, 60),
    ("bonjour madame", "fr", 150, 55),
    ("merci beaucoup", "fr+f3", 130, 75),
    ("buenos días", "es", 160, 45),
    ("muchas gracias amigo", "es+f4", 180, 65),
    ("can you hear me", "en+f3", 110, 90),
    ("nine eight seven six five", "en+m3", 210, 25),
]


def espeak_path() -> str | None:
    return shutil.which("espeak-ng")


def speak(text: str, voice: str, speed: int, pitch: int, path: Path) -> tuple[np.ndarray, int]:
    """One utterance from espeak-ng as float32 mono, with espeak's own rate (22050 Hz)."""
    command = [espeak_path() or "espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path)]
    subprocess.run([*command, text], check=True, capture_output=True, timeout=30)
    return read_wav(path)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A mono WAV as float32 in [-1, 1] and its rate (16-bit PCM scaled, float WAV as is)."""
    rate, data = wavfile.read(path)
    if data.dtype == np.int16:
        return (data / 32768.0).astype(np.float32), int(rate)
    return data.astype(np.float32), int(rate)


def resample(waveform: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling by the exact rational ratio (22050 -> 44100 is up by 2)."""
    divisor = gcd(from_rate, to_rate)
    return resample_poly(waveform, to_rate // divisor, from_rate // divisor).astype(np.float32)


def coloured_noise(rng: np.random.Generator, samples: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    frequencies = np.fft.rfftfreq(samples)
    frequencies[0] = frequencies[1]
    noise = np.fft.irfft(spectrum / frequencies ** (exponent / 2), n=samples)
    return (noise / np.sqrt(np.mean(noise**2))).astype(np.float32)


def harmonic_phrase(rng: np.random.Generator, rate: int, seconds: float) -> np.ndarray:
    """A music-like phrase: notes of a pentatonic scale, each a few decaying harmonics with a
    pluck envelope; steady pitch within a note and no noise, unlike speech."""
    scale = 220.0 * 2.0 ** (np.array([0, 2, 4, 7, 9, 12, 14, 16]) / 12)
    samples = int(seconds * rate)
    out = np.zeros(samples, dtype=np.float64)
    start = 0
    while start < samples:
        length = min(int(rng.uniform(0.15, 0.5) * rate), samples - start)
        t = np.arange(length) / rate
        f0 = rng.choice(scale) * rng.choice([0.5, 1.0, 2.0])
        decay = rng.uniform(2.0, 8.0)
        note = sum(np.sin(2 * np.pi * k * f0 * t) * rng.uniform(0.2, 1.0) / k for k in range(1, 7))
        attack = np.minimum(1.0, t / 0.01)
        out[start : start + length] += note * attack * np.exp(-decay * t)
        start += length
    return out.astype(np.float32)


def speech_shaped_noise(rng: np.random.Generator, speech: np.ndarray, smoothing: int = 441) -> np.ndarray:
    """Noise with the clip's own long-term spectrum (random phases) and its loudness envelope
    (Hilbert magnitude, moving average over `smoothing` samples, 10 ms at 44.1 kHz).

    Spectrum and envelope match the speech, so what is left to tell them apart is the fine
    structure: harmonics, formant movement, onsets.
    """
    magnitudes = np.abs(np.fft.rfft(speech))
    phases = np.exp(2j * np.pi * rng.random(magnitudes.size))
    noise = np.fft.irfft(magnitudes * phases, n=speech.size)
    noise /= np.sqrt(np.mean(noise**2)) + 1e-12
    envelope = uniform_filter1d(np.abs(hilbert(speech)), smoothing)
    return (noise * envelope).astype(np.float32)


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """signal + noise scaled so that the signal-to-noise power ratio is snr_db."""
    signal_power = np.mean(signal**2)
    noise_power = np.mean(noise[: signal.size] ** 2)
    scale = np.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
    return (signal + scale * noise[: signal.size]).astype(np.float32)


def clip_windows(clip: np.ndarray, encoder: AudioEncoder) -> np.ndarray:
    """What the pipeline does before featurize: peak-normalise if asked, then cut into
    non-overlapping windows of window_samples, zero-padding the last (or only) one."""
    clip = np.asarray(clip, dtype=np.float32)
    peak = float(np.max(np.abs(clip))) if clip.size else 0.0
    if encoder.peak_normalise and peak > 0:
        clip = clip / peak
    size = encoder.window_samples
    count = max(1, -(-clip.size // size))
    padded = np.zeros(count * size, dtype=np.float32)
    padded[: clip.size] = clip
    return padded.reshape(count, size)


def embed_windows(encoder: AudioEncoder, windows: np.ndarray) -> torch.Tensor:
    """(B, window_samples) -> (B, dim), through featurize and forward as the pipeline calls them."""
    with torch.inference_mode():
        return encoder(**encoder.featurize(windows))


def embed_clips(encoder: AudioEncoder, clips: list[np.ndarray]) -> np.ndarray:
    """One embedding per clip: the mean over its windows; all windows go through as one batch."""
    windows = [clip_windows(clip, encoder) for clip in clips]
    embedded = embed_windows(encoder, np.concatenate(windows)).numpy()
    bounds = np.cumsum([0, *(len(w) for w in windows)])
    return np.stack([embedded[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def leave_one_out_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Share of clips whose nearest class centroid (cosine), fitted without them, is their own class.

    Features are standardised per dimension with the other clips' statistics first, so that
    a few large dimensions do not decide every distance.
    """
    classes = np.unique(labels)
    correct = 0
    for i in range(len(features)):
        keep = np.arange(len(features)) != i
        mean, std = features[keep].mean(axis=0), features[keep].std(axis=0) + 1e-8
        z = (features - mean) / std
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        centroids = np.stack([z[keep & (labels == c)].mean(axis=0) for c in classes])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        correct += int(classes[np.argmax(centroids @ z[i])] == labels[i])
    return correct / len(features)


def reference_clip(rate: int, samples: int) -> np.ndarray:
    """The clip the aiSFX parity tests compare on: tones, noise and a silent gap, peak 0.3."""
    rng = np.random.default_rng(1)
    clip = harmonic_phrase(rng, rate, samples / rate) + 0.05 * coloured_noise(rng, samples, 1.0)
    clip[30000:40000] = 0.0
    return (0.3 * clip / np.abs(clip).max()).astype(np.float32)


def clip_summary(clip: np.ndarray) -> np.ndarray:
    """Enough of a clip to tell whether it is the one a stored reference was computed from:
    length, sum, energy and the first samples (compared with a tolerance, not as bytes, so a
    last-bit difference in another machine's sine does not read as a changed clip)."""
    clip = clip.astype(np.float64)
    return np.concatenate([[clip.size, clip.sum(), np.square(clip).sum()], clip[:16]])
