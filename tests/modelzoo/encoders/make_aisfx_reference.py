"""Write aisfx_reference.npz: the aiSFX package's own librosa front end on the reference clip.

The parity tests compare our log-mel and embedding with this file instead of calling librosa:
librosa's first call in a fresh environment compiles its numba kernels for about 17 s, a
cost the test suite paid on every CI run. Rerun after changing the clip or the package:

    python -m tests.modelzoo.encoders.make_aisfx_reference
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from scipy.io import wavfile

from modelzoo.encoders.aisfx import SPEC_MAX
from modelzoo.encoders.loading import load_audio_encoder
from tests.modelzoo.encoders.audio_samples import clip_summary, reference_clip

RATE = 44100
REFERENCE = Path(__file__).with_name("aisfx_reference.npz")


def main() -> None:
    import librosa
    from aisfx.spectrogram.spectrogram_librosa import compute_spectrogram

    clip = reference_clip(RATE, load_audio_encoder("aisfx").window_samples)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "clip.wav"
        wavfile.write(path, RATE, clip)  # 32-bit float WAV: no quantisation, as the package reads files
        spectrogram = compute_spectrogram(
            filename=str(path),
            sr=float(RATE),
            block_size=2048,
            hop_size=1024,
            n_mels=96,
            f_min=0.0,
            f_max=22050.0,
        )
    log_mel = (spectrogram / SPEC_MAX).T.astype(np.float32)  # (frames, mels), as the model takes it
    np.savez_compressed(
        REFERENCE, log_mel=log_mel, clip_summary=clip_summary(clip), librosa_version=librosa.__version__
    )
    print(f"wrote {REFERENCE}: log-mel {log_mel.shape}, librosa {librosa.__version__}")


if __name__ == "__main__":
    main()
