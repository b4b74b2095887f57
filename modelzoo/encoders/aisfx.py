"""aiSFX sound-effects embeddings from the `aisfx` package: the default, offline audio encoder.

The `aisfx` PyPI package (0.1.2) ships `aisfx/models/checkpoint.pth`, the "X-Sequential-CE"
model of A.B. Ma and A. Lerch, "Representation Learning for the Automatic Indexing of Sound
Effects Libraries", ISMIR 2022: a 9-layer CNN (the DCASE 2018 cross-task baseline layout,
four blocks of two 3x3 conv + BN + ReLU with max pooling) trained across nine sound-effects
libraries, giving 512-d embeddings of 100-frame log-mel blocks (about 2.3 s). Licence: the
package's license file is CC BY 4.0 (copyright A.B. Ma and A. Lerch), while its classifier
says MIT; either way the weights may be used and redistributed with attribution, which is
what this paragraph is.

The package itself is not imported: its requirements pin numpy 1.23 and librosa 0.9 (it is
installed with --no-deps), so the network and front end are rewritten here in torch against
the checkpoint's keys, and the package is only a place the weights live. The front end is
the package's librosa variant: 44.1 kHz, clip scaled to peak 1 (by the caller), 2048-point
Hann STFT with hop 1024 and centred frames, 96 HTK mel bands over 0-22050 Hz with unit-area
filters, power, log10(1 + 10^4 S), divided by 9.457798957824707 (the package's "original"
min-max normalisation, minimum 0). A window of 99 * 1024 samples then gives exactly the
100 frames the network saw in training.

Loading never unpickles arbitrary objects. The checkpoint is a pickled tuple (state_dict,
ds_dict) whose ds_dict (dataset name -> (index, classes)) holds numpy integer scalars, which
`torch.load(weights_only=True)` refuses by default. Rebuilding a numpy scalar from a dtype
and raw bytes runs no user code, so exactly the globals that takes (the scalar rebuilder,
np.dtype and the int64 dtype class) are allowed, only for this
one load (a scoped `safe_globals`, not a process-wide allowlist). The classifier heads
(`fc.*`) are dropped; the `embedding_net.*` tensors are loaded strictly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelzoo.encoders.base import AudioEncoder, check_windows
from modelzoo.encoders.log_mel import LogMelFrontEnd
from modelzoo.encoders.packaged import packaged_file
from modelzoo.registry import register

PACKAGE = "aisfx"
WEIGHTS_FILE = "checkpoint.pth"
EMBEDDING_PREFIX = "embedding_net."

SAMPLE_RATE = 44100
N_FFT = 2048
HOP_LENGTH = 1024
N_MELS = 96
F_MIN, F_MAX = 0.0, 22050.0
LOG_GAIN = 1e4
SPEC_MAX = 9.457798957824707  # max of the training spectrograms; their min is 0
BLOCK_FRAMES = 100
WINDOW_SAMPLES = (BLOCK_FRAMES - 1) * HOP_LENGTH  # centred frames: 1 + 101376 // 1024 == 100
WIDTHS = (64, 128, 256, 512)
POOLS = ((2, 2), (2, 2), (2, 2), (1, 1))  # (time, freq) max-pool after each block


def packaged_weights_path() -> Path:
    """The checkpoint inside the installed package (never imported: its scripts pin old libraries)."""
    return packaged_file(
        PACKAGE, f"models/{WEIGHTS_FILE}", "audio encoder 'aisfx'", "pip install --no-deps aisfx==0.1.2"
    )


def _numpy_int64_globals() -> list[object]:
    """What a pickled numpy int64 needs: the scalar rebuilder (under the name numpy 1.x pickled
    it with), np.dtype, and the int64 dtype class (numpy >= 1.25 builds dtypes as subclasses).
    """
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    return [(scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype(np.int64))]


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, read with weights_only=True (see the module docstring)."""
    with torch.serialization.safe_globals(_numpy_int64_globals()):
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[0], Mapping)):
        raise OSError(f"audio encoder 'aisfx': {path} is not a (state_dict, ds_dict) checkpoint")
    return dict(loaded[0])


def embedding_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The embedding network's tensors with their prefix stripped; classifier heads dropped."""
    return {
        key.removeprefix(EMBEDDING_PREFIX): tensor
        for key, tensor in state_dict.items()
        if key.startswith(EMBEDDING_PREFIX)
    }


class ConvBlock(nn.Module):
    """Two 3x3 conv (no bias) + BN + ReLU layers, then max pooling; names match the checkpoint."""

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, T, F)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.max_pool2d(x, kernel_size=self.pool)  # (B, C_out, T / pt, F / pf)


class AisfxEmbeddingNet(nn.Module):
    """Log-mel blocks (B, T, F) -> (B, 512): mean over frequency, then max over time."""

    def __init__(self) -> None:
        super().__init__()
        channels = (1, *WIDTHS)
        self.conv_block1 = ConvBlock(channels[0], channels[1], POOLS[0])
        self.conv_block2 = ConvBlock(channels[1], channels[2], POOLS[1])
        self.conv_block3 = ConvBlock(channels[2], channels[3], POOLS[2])
        self.conv_block4 = ConvBlock(channels[3], channels[4], POOLS[3])

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        x = log_mel.unsqueeze(1)  # (B, 1, T, F)
        for block in (self.conv_block1, self.conv_block2, self.conv_block3, self.conv_block4):
            x = block(x)  # ends at (B, 512, T / 8, F / 8)
        return x.mean(dim=3).amax(dim=2)  # (B, 512)


def load_packaged_network() -> AisfxEmbeddingNet:
    """The embedding network holding the packaged weights, loaded strictly, in eval mode."""
    network = AisfxEmbeddingNet()
    network.load_state_dict(embedding_weights(load_checkpoint(packaged_weights_path())), strict=True)
    return network.eval()


def aisfx_front_end() -> LogMelFrontEnd:
    """The package's librosa-variant log-mel front end, normalised as in training."""
    return LogMelFrontEnd(
        sample_rate=SAMPLE_RATE,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        n_mels=N_MELS,
        f_min=F_MIN,
        f_max=F_MAX,
        log_gain=LOG_GAIN,
        divisor=SPEC_MAX,
    )


@register("audio_encoder", "aisfx")
class AisfxEncoder(AudioEncoder):
    """512-d aiSFX embedding of one 101376-sample (2.3 s) window at 44.1 kHz, peak-normalised clip."""

    weights_location = staticmethod(packaged_weights_path)  # where the weights live, for cheap identities

    def __init__(self) -> None:
        super().__init__()
        self.front_end = aisfx_front_end()
        self.network = load_packaged_network()
        self.model_id = "aisfx"
        self.dim = WIDTHS[-1]
        self.sample_rate = SAMPLE_RATE
        self.window_samples = WINDOW_SAMPLES
        self.peak_normalise = True
        self.eval()

    def featurize(self, windows: np.ndarray) -> dict[str, torch.Tensor]:
        """The raw windows: the spectrogram is computed in forward, on the model's device."""
        return {"waveforms": torch.from_numpy(check_windows(windows, self.window_samples, self.model_id))}

    def log_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, window_samples) -> the normalised log-mel blocks (B, 100, 96) the network takes."""
        return self.front_end(waveforms)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        # waveforms: (B, window_samples)
        return self.network(self.log_mel(waveforms))  # (B, 512)
