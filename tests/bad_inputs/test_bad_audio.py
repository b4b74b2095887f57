"""Bad audio (issue 12), through the same production pipeline as the other bad inputs.

The 40-row project gains an audio column: every row a short tone, one row spoiled per case.
A file that cannot be decoded is absent and counted (`files_undecodable`), or stops align
with `data.on_bad_audio: error`; odd but valid files (8 channels, 384 kHz, 3 hours) are
decoded, mixed, resampled and bounded by `encoders.audio.max_seconds`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.errors import DataError
from tests.bad_inputs import audiofiles as sounds
from tests.bad_inputs.pipeline import Encoders
from tests.bad_inputs.project import ROWS, Project
from tests.bad_inputs.test_bad_inputs import Case, Completes, Fails, both, params, run_case

pytest.importorskip("aisfx", reason="the default audio encoder's weights: pip install --no-deps aisfx==0.1.2")


def with_audio(spoil: dict[int, tuple[str, sounds.Writer | None]] | None = None) -> Callable[[Project], None]:
    """Give every row a clip `a<row>.wav`; `spoil` maps a row to (file name, writer or None)."""

    def setup(project: Project) -> None:
        root = project.root / "audio"
        root.mkdir(parents=True, exist_ok=True)
        clips = []
        for row in range(ROWS):
            name, writer = (spoil or {}).get(row, (f"a{row:02d}.wav", sounds.tone(200.0 + 40 * (row % 4))))
            if writer is not None:
                writer(root / name)
            clips.append(name)
        project.rows["clip"] = clips
        project.params["data"]["columns"]["audio"] = ["clip"]
        project.params["data"]["audio_root"] = "audio"
        project.params["encoders"]["audio"] = {"model": "aisfx", "max_seconds": 3, "batch_size": 16}

    return setup


def spoiled(name: str, writer: sounds.Writer | None) -> Callable[[Project], None]:
    return with_audio({0: (name, writer)})


def undecodable() -> Completes:
    return Completes(report={"files_undecodable": {"clip": 1}}, absent=((0, "clip"),), present=((1, "clip"),))


def directory_named_like_a_clip(project: Project) -> None:
    with_audio({0: ("folder.wav", None)})(project)
    (project.root / "audio" / "folder.wav").mkdir()


def outside_clip(project: Project) -> None:
    with_audio({0: ("../outside.wav", None)})(project)
    sounds.tone()(project.root / "outside.wav")


CASES = [
    Case(
        "audio-good",
        with_audio(),
        Completes(report={"files_undecodable": {"clip": 0}}, present=((0, "clip"),)),
    ),
    Case("audio-empty-file", spoiled("empty.wav", sounds.empty), undecodable()),
    Case("audio-truncated-file", spoiled("cut.wav", sounds.truncated), undecodable()),
    Case("audio-not-audio", spoiled("text.wav", sounds.not_audio), undecodable()),
    Case("audio-unsupported-codec", spoiled("codec.wav", sounds.unsupported_codec), undecodable()),
    Case("audio-zero-samples", spoiled("zero.wav", sounds.zero_samples), undecodable()),
    Case("audio-nan-samples", spoiled("nan.wav", sounds.non_finite(float("nan"))), undecodable()),
    Case("audio-inf-samples", spoiled("inf.wav", sounds.non_finite(float("inf"))), undecodable()),
    Case(
        "audio-8-channels",
        spoiled("eight.wav", sounds.tone(channels=8)),
        Completes(report={"files_undecodable": {"clip": 0}}, present=((0, "clip"),)),
    ),
    Case(
        "audio-384-khz",
        spoiled("fast.wav", sounds.tone(seconds=0.5, rate=384_000)),
        Completes(report={"files_undecodable": {"clip": 0}}, present=((0, "clip"),)),
    ),
    Case(
        "audio-path-escaping-the-root",
        outside_clip,
        Completes(report={"paths_refused": {"clip": 1}}, absent=((0, "clip"),)),
    ),
    Case(
        "audio-directory-named-like-a-clip",
        directory_named_like_a_clip,
        Completes(report={"files_missing": {"clip": 1}}, absent=((0, "clip"),)),
    ),
    Case(
        "audio-bad-file-is-an-error-when-asked",
        both(spoiled("text.wav", sounds.not_audio), params("data.on_bad_audio", "error")),
        Fails("align", DataError, ("1 audio files cannot be decoded", "text.wav"), column="clip"),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_audio(case: Case, tmp_path: Path, encoders: Encoders) -> None:
    run_case(case, tmp_path, encoders)


def test_a_three_hour_clip_costs_what_max_seconds_allows(tmp_path: Path, encoders: Encoders) -> None:
    started = time.perf_counter()
    run_case(
        Case(
            "audio-3-hours",
            spoiled("long.flac", sounds.three_hours),
            Completes(report={"files_undecodable": {"clip": 0}}, present=((0, "clip"),)),
        ),
        tmp_path,
        encoders,
    )
    assert time.perf_counter() - started < 120
