"""A log-compressed mel spectrogram in plain torch, so audio front ends run wherever the model does.

Written against the conventions librosa uses by default (periodic Hann window, frames
centred with zero padding, HTK mel scale, triangular filters over the FFT bin frequencies,
each filter scaled to unit L1 area), because pretrained audio models were trained on
features made that way; torchaudio is not needed (and cannot be installed beside the
pinned torch). The filterbank and window are buffers, so they move with `.to(device)` and
take part in the encoder's weights digest: a change to the front end changes cache keys.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def hz_to_htk_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 * log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def htk_mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of hz_to_htk_mel."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def htk_mel_filterbank(sample_rate: float, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, each row summing to 1 (unit L1 area).

    Filter m rises from corner m to a peak at corner m + 1 and falls to zero at corner
    m + 2, the n_mels + 2 corners being evenly spaced on the mel scale between f_min and
    f_max. Computed in float64 and cast once, so rounding does not depend on the device.
    """
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got {f_min}, {f_max}, {sample_rate}")
    bin_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)  # (n_bins,)
    corners = htk_mel_to_hz(np.linspace(hz_to_htk_mel(f_min), hz_to_htk_mel(f_max), n_mels + 2))
    widths = np.diff(corners)  # (n_mels + 1,)
    offsets = corners[:, None] - bin_hz[None, :]  # (n_mels + 2, n_bins)
    rising = -offsets[:-2] / widths[:-1, None]  # (n_mels, n_bins)
    falling = offsets[2:] / widths[1:, None]  # (n_mels, n_bins)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    area = filters.sum(axis=1, keepdims=True)
    filters = np.divide(filters, area, out=np.zeros_like(filters), where=area > 0)
    return filters.astype(np.float32)


class LogMelFrontEnd(nn.Module):
    """Waveforms (B, N) -> log10(1 + gain * mel power) / divisor, as (B, frames, n_mels).

    frames = 1 + N // hop_length (frames are centred, the signal zero-padded by n_fft // 2
    on both sides). Always computed in float32, even under autocast: bf16 would lose most
    of the dynamic range the log compression is there to keep.
    """

    def __init__(
        self,
        *,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        n_mels: int,
        f_min: float,
        f_max: float,
        log_gain: float,
        divisor: float,
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.log_gain = log_gain
        self.divisor = divisor
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True, dtype=torch.float32))
        filters = htk_mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
        self.register_buffer("mel_filters", torch.from_numpy(filters))  # (n_mels, n_bins)

    def power_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Mel power spectrogram (B, n_mels, frames), before compression."""
        spectrum = torch.stft(
            waveforms.float(),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )  # (B, n_bins, frames)
        power = spectrum.real.square() + spectrum.imag.square()
        return torch.matmul(self.mel_filters, power)  # (B, n_mels, frames)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        # waveforms: (B, N) float
        if waveforms.ndim != 2:
            raise ValueError(f"expected waveforms of shape (batch, samples), got {tuple(waveforms.shape)}")
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            mel = self.power_mel(waveforms)  # (B, n_mels, frames)
            compressed = torch.log10(mel * self.log_gain + 1.0) / self.divisor
        return compressed.transpose(1, 2)  # (B, frames, n_mels)
