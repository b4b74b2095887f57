"""Audio encoders: the packaged aiSFX model against its reference code, on real-ish sound, and HF models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile

import modelzoo.encoders.aisfx as aisfx_module
from modelzoo.encoders.aisfx import (
    embedding_weights,
    load_checkpoint,
    packaged_weights_path,
)
from modelzoo.encoders.base import AudioEncoder
from modelzoo.encoders.huggingface_audio import HuggingFaceAudioEncoder
from modelzoo.encoders.loading import encoder_fingerprint, hub_name_problem, load_audio_encoder
from modelzoo.registry import names
from tests.modelzoo.encoders.audio_samples import (
    UTTERANCES,
    clip_summary,
    clip_windows,
    coloured_noise,
    embed_clips,
    embed_windows,
    espeak_path,
    harmonic_phrase,
    leave_one_out_centroid_accuracy,
    mix_at_snr,
    read_wav,
    reference_clip,
    resample,
    speak,
    speech_shaped_noise,
)
from tests.modelzoo.encoders.make_aisfx_reference import REFERENCE

RATE = 44100


@pytest.fixture(scope="module")
def aisfx() -> AudioEncoder:
    return load_audio_encoder("aisfx")


@pytest.fixture(scope="module")
def speech_clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """The espeak-ng utterances at 44.1 kHz (skips the tests that need them without espeak-ng)."""
    if espeak_path() is None:
        pytest.skip("espeak-ng is not installed")
    directory = tmp_path_factory.mktemp("speech")
    clips = []
    for index, (text, voice, speed, pitch) in enumerate(UTTERANCES):
        waveform, rate = speak(text, voice, speed, pitch, directory / f"{index}.wav")
        clips.append(resample(waveform, rate, RATE))
    return clips


def test_aisfx_is_registered_and_describes_its_input(aisfx: AudioEncoder) -> None:
    assert "aisfx" in names("audio_encoder")
    assert isinstance(aisfx, AudioEncoder) and not aisfx.training
    assert (aisfx.model_id, aisfx.dim, aisfx.sample_rate) == ("aisfx", 512, 44100)
    assert aisfx.window_samples == 99 * 1024 and aisfx.peak_normalise is True


def test_aisfx_without_its_package_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aisfx_module, "PACKAGE", "aisfx_is_not_installed_here")
    with pytest.raises(OSError, match="audio encoder 'aisfx': no local weights.*not installed"):
        aisfx_module.packaged_weights_path()


def test_aisfx_log_mel_stays_float32_under_autocast(aisfx: AudioEncoder) -> None:
    """The pipeline runs encoders under bf16 autocast on CUDA; the front end must not follow."""
    rng = np.random.default_rng(7)
    waveforms = aisfx.featurize(clip_windows(harmonic_phrase(rng, RATE, 2.0), aisfx))["waveforms"]
    with torch.inference_mode():
        plain = aisfx.log_mel(waveforms)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = aisfx.log_mel(waveforms)
            embedding = aisfx(waveforms=waveforms)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, plain, rtol=0, atol=0)
    assert torch.isfinite(embedding).all()


def test_aisfx_checkpoint_loads_as_tensors_only() -> None:
    """weights_only load: nothing but tensors comes out; classifier heads are dropped."""
    state = load_checkpoint(packaged_weights_path())
    weights = embedding_weights(state)
    assert all(isinstance(tensor, torch.Tensor) for tensor in state.values())
    assert len(weights) == 4 * 12  # per block: 2 convs + 2 BNs of 5 tensors each
    assert any(key.startswith("fc.") for key in state) and not any(key.startswith("fc.") for key in weights)


def test_aisfx_is_finite_deterministic_and_rows_independent_of_batch(aisfx: AudioEncoder) -> None:
    rng = np.random.default_rng(0)
    windows = np.stack(
        [
            clip_windows(harmonic_phrase(rng, RATE, 2.0), aisfx)[0],
            clip_windows(coloured_noise(rng, aisfx.window_samples, 1.0), aisfx)[0],
            np.zeros(aisfx.window_samples, dtype=np.float32),  # silence: log1p keeps it finite
        ]
    )
    batch = embed_windows(aisfx, windows)
    assert batch.shape == (3, 512) and torch.isfinite(batch).all()
    torch.testing.assert_close(embed_windows(aisfx, windows), batch, rtol=0, atol=0)
    for row in range(3):
        torch.testing.assert_close(
            embed_windows(aisfx, windows[row : row + 1])[0], batch[row], rtol=0, atol=1e-5
        )


def test_aisfx_featurize_rejects_windows_it_was_not_built_for(aisfx: AudioEncoder) -> None:
    with pytest.raises(ValueError, match="101376"):
        aisfx.featurize(np.zeros((2, 44100), dtype=np.float32))
    with pytest.raises(ValueError, match="101376"):
        aisfx.featurize(np.zeros(aisfx.window_samples, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        aisfx.featurize(np.full((1, aisfx.window_samples), np.nan, dtype=np.float32))


@pytest.fixture(scope="module")
def reference_case(aisfx: AudioEncoder, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The reference clip read back from a float WAV, and the package's own librosa front end's
    log-mel of it, as its inference code computes it from that file (stored by
    make_aisfx_reference.py: librosa's first call compiles for ~17 s)."""
    clip = reference_clip(RATE, aisfx.window_samples)
    stored = np.load(REFERENCE)
    np.testing.assert_allclose(
        clip_summary(clip),
        stored["clip_summary"],
        rtol=1e-6,
        err_msg=f"the clip is not the one {REFERENCE.name} was computed from: rerun "
        "python -m tests.modelzoo.encoders.make_aisfx_reference",
    )
    path = tmp_path_factory.mktemp("reference") / "clip.wav"
    wavfile.write(path, RATE, clip)  # 32-bit float WAV: no quantisation between the two sides
    read_back, _ = read_wav(path)
    return read_back, stored["log_mel"]


def test_aisfx_log_mel_matches_reference_front_end(aisfx: AudioEncoder, reference_case: tuple) -> None:
    clip, reference_log_mel = reference_case
    windows = clip_windows(clip, aisfx)
    assert windows.shape == (1, aisfx.window_samples)
    with torch.inference_mode():
        ours = aisfx.log_mel(aisfx.featurize(windows)["waveforms"])[0].numpy()
    assert ours.shape == reference_log_mel.shape == (100, 96)
    difference = float(np.abs(ours - reference_log_mel).max())
    peak = float(reference_log_mel.max())
    print(f"log-mel max |ours - librosa reference| = {difference:.3g} (values up to {peak:.3f})")
    assert difference < 2e-5


def test_aisfx_embedding_matches_reference_network(aisfx: AudioEncoder, reference_case: tuple) -> None:
    """Our encoder on the waveform vs the package's EmbeddingNet on the package's spectrogram."""
    from aisfx.models.cnn2d import EmbeddingNet

    clip, reference_log_mel = reference_case
    reference_net = EmbeddingNet("max", 3, 1, 64)
    reference_net.load_state_dict(embedding_weights(load_checkpoint(packaged_weights_path())), strict=True)
    with torch.inference_mode():
        expected = reference_net.eval()(torch.from_numpy(reference_log_mel)[None])[0]
    ours = embed_windows(aisfx, clip_windows(clip, aisfx))[0]
    difference = float((ours - expected).abs().max())
    peak = float(expected.abs().max())
    print(f"embedding max |ours - reference| = {difference:.3g} (values up to {peak:.3f})")
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)


def test_aisfx_tells_speech_from_music_like_tones(
    aisfx: AudioEncoder, speech_clips: list[np.ndarray]
) -> None:
    rng = np.random.default_rng(2)
    tones = [harmonic_phrase(rng, RATE, rng.uniform(1.0, 2.5)) for _ in speech_clips]
    features = embed_clips(aisfx, [*speech_clips, *tones])
    labels = np.array([0] * len(speech_clips) + [1] * len(tones))
    accuracy = leave_one_out_centroid_accuracy(features, labels)
    print(f"speech vs tones, leave-one-out nearest centroid: {accuracy:.3f} on {len(labels)} clips")
    assert accuracy >= 0.9


def test_aisfx_hears_noise_colour_under_speech(aisfx: AudioEncoder, speech_clips: list[np.ndarray]) -> None:
    """Harder: the same utterances with pink or brown noise underneath, 20 dB below the speech."""
    rng = np.random.default_rng(3)
    mixed, labels = [], []
    for label, exponent in enumerate((1.0, 2.0)):
        for clip in speech_clips:
            mixed.append(mix_at_snr(clip, coloured_noise(rng, clip.size, exponent), snr_db=20.0))
            labels.append(label)
    accuracy = leave_one_out_centroid_accuracy(embed_clips(aisfx, mixed), np.array(labels))
    print(f"speech + pink vs + brown noise at 20 dB SNR, leave-one-out nearest centroid: {accuracy:.3f}")
    assert accuracy >= 0.85


def log_mel_statistics(encoder: AudioEncoder, clips: list[np.ndarray]) -> np.ndarray:
    """Baseline features without the network: per-band mean and std of the log-mel, over windows."""
    rows = []
    for clip in clips:
        with torch.inference_mode():
            log_mel = encoder.log_mel(encoder.featurize(clip_windows(clip, encoder))["waveforms"])  # type: ignore[operator]
        rows.append(torch.cat([log_mel.mean(dim=1), log_mel.std(dim=1)], dim=1).mean(dim=0).numpy())
    return np.stack(rows)


def test_aisfx_hears_speech_fine_structure(aisfx: AudioEncoder, speech_clips: list[np.ndarray]) -> None:
    """Speech vs noise with each utterance's own spectrum and loudness envelope: spectral
    statistics barely tell them apart, the network should (harmonics, formant movement)."""
    rng = np.random.default_rng(5)
    clips = [*speech_clips, *(speech_shaped_noise(rng, clip) for clip in speech_clips)]
    labels = np.array([0] * len(speech_clips) + [1] * len(speech_clips))
    accuracy = leave_one_out_centroid_accuracy(embed_clips(aisfx, clips), labels)
    baseline = leave_one_out_centroid_accuracy(log_mel_statistics(aisfx, clips), labels)
    print(f"speech vs speech-shaped noise: aisfx {accuracy:.3f}, log-mel statistics baseline {baseline:.3f}")
    assert accuracy >= 0.9 and accuracy > baseline


def test_audio_fingerprint_records_window_and_rate(aisfx: AudioEncoder) -> None:
    fingerprint = encoder_fingerprint(aisfx, pooling="mean", hop_samples=aisfx.window_samples)
    assert fingerprint["kind"] == "audio" and fingerprint["dim"] == 512
    assert fingerprint["preprocessing"] == {
        "hop_samples": 101376,
        "peak_normalise": True,
        "pooling": "mean",
        "sample_rate": 44100,
        "window_samples": 101376,
    }
    assert json.loads(json.dumps(fingerprint)) == fingerprint


def test_audio_encoder_name_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    assert hub_name_problem("audio", "aisfx") is None
    assert hub_name_problem("audio", str(tmp_path)) is None
    assert hub_name_problem("audio", "facebook/wav2vec2-base") is None  # fetchable when online
    missing = hub_name_problem("audio", str(tmp_path / "nope"))
    assert missing is not None and "audio encoder" in missing and "does not exist" in missing
    typo = hub_name_problem("audio", "aisfz")
    assert typo is not None and "'aisfx'" in typo


def tiny_wav2vec2(directory: Path, *, attention_mask: bool) -> Path:
    """A randomly initialised 2-layer wav2vec2 with hidden size 16, saved as a local model dir."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8, 8),
        conv_kernel=(10, 3, 3),
        conv_stride=(5, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer" if attention_mask else "group",
    )
    Wav2Vec2Model(config).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=attention_mask).save_pretrained(
        directory
    )
    return directory


@pytest.mark.parametrize("attention_mask", [False, True])
def test_hf_audio_encoder_from_local_directory(tmp_path: Path, attention_mask: bool) -> None:
    encoder = load_audio_encoder(str(tiny_wav2vec2(tmp_path, attention_mask=attention_mask)))
    assert isinstance(encoder, HuggingFaceAudioEncoder) and not encoder.training
    assert (encoder.dim, encoder.sample_rate, encoder.peak_normalise) == (16, 16000, False)
    assert encoder.window_samples == HuggingFaceAudioEncoder.WINDOW_SECONDS * 16000
    rng = np.random.default_rng(4)
    windows = rng.standard_normal((3, encoder.window_samples)).astype(np.float32)
    features = encoder.featurize(windows)
    assert ("attention_mask" in features) == attention_mask
    embeddings = embed_windows(encoder, windows)
    assert embeddings.shape == (3, 16) and torch.isfinite(embeddings).all()
    torch.testing.assert_close(embed_windows(encoder, windows[1:2])[0], embeddings[1], rtol=0, atol=1e-5)
    assert encoder_fingerprint(encoder)["preprocessing"]["sample_rate"] == 16000


@pytest.mark.filterwarnings("ignore:At least one mel filter:UserWarning")
def test_hf_audio_encoder_runs_an_ast_style_model(tmp_path: Path) -> None:
    """AST: a filterbank extractor (fixed 1024 frames, no attention mask) and patch tokens."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    torch.manual_seed(0)
    config = ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ASTModel(config).save_pretrained(tmp_path)
    ASTFeatureExtractor().save_pretrained(tmp_path)
    encoder = load_audio_encoder(str(tmp_path))
    windows = np.random.default_rng(6).standard_normal((2, encoder.window_samples)).astype(np.float32)
    embeddings = embed_windows(encoder, windows)
    assert embeddings.shape == (2, 16) == (2, encoder.dim) and torch.isfinite(embeddings).all()


def test_hf_audio_encoder_errors_name_the_model(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(OSError, match="audio encoder .*no-such-model.*does not exist"):
        load_audio_encoder(str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError, match="audio encoder .*empty.*no audio model"):
        load_audio_encoder(str(empty))
