"""Align's memo of files already hashed: a rerun reads only new or changed files, and never
trusts a file that was rewritten (tasks/modalities/probe_memo.py)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from tasks.data.align import DIGEST, ID, align
from tasks.modalities import probe_memo
from tasks.modalities.image import ImageModality
from tasks.modalities.probe_memo import ProbeMemo
from tests.tasks.data.test_align import image_config, items


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for i in range(6):
        Image.new("RGB", (4, 4), (40 * i, 0, 0)).save(root / f"{i}.png")
    return root


@pytest.fixture
def probed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files align reads (hashes and test-decodes), in this test."""
    names: list[str] = []
    probe_file = ImageModality.probe_file

    def counting(self: ImageModality, path: Path) -> tuple[str, str | None]:
        names.append(path.name)
        return probe_file(self, path)

    monkeypatch.setattr(ImageModality, "probe_file", counting)
    return names


@pytest.fixture
def settled_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by the test a moment ago count as settled (the real wait is 2 s)."""
    monkeypatch.setattr(probe_memo, "_SETTLED_NS", 0)


def rows(count: int) -> pd.DataFrame:
    frame = items(30)
    frame["photo"] = pd.array([f"{i % count}.png" for i in range(30)], dtype="string")
    return frame


def digests(aligned: pd.DataFrame) -> dict[str, str]:
    return dict(zip(aligned[ID], aligned[DIGEST + "photo"], strict=True))


def stat_of(size: int, changed_ns: int) -> Any:
    """What the memo reads of a file's stat, for a file last changed at `changed_ns`."""
    return SimpleNamespace(st_size=size, st_mtime_ns=changed_ns, st_ctime_ns=changed_ns, st_ino=7)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.usefixtures("settled_at_once")
def test_a_rerun_reads_only_the_files_it_has_not_seen(
    photos: Path, tmp_path: Path, probed: list[str]
) -> None:
    memo = tmp_path / "probes"
    align(image_config(photos), [("a.csv", rows(4))], memo)
    assert sorted(probed) == ["0.png", "1.png", "2.png", "3.png"]
    probed.clear()
    again, _ = align(image_config(photos), [("a.csv", rows(6))], memo)
    assert sorted(probed) == ["4.png", "5.png"]  # the new rows' files only
    without, _ = align(image_config(photos), [("a.csv", rows(6))])
    assert digests(again) == digests(without)
    assert digests(again)["id-0005"] == sha256(photos / "5.png")


@pytest.mark.usefixtures("settled_at_once")
def test_a_file_rewritten_with_its_old_size_and_mtime_is_read_again(
    photos: Path, tmp_path: Path, probed: list[str]
) -> None:
    memo = tmp_path / "probes"
    path = photos / "1.png"
    Image.new("RGB", (4, 4), (0, 0, 250)).save(path, format="BMP")  # a BMP's size follows its shape
    align(image_config(photos), [("a.csv", rows(2))], memo)
    before = path.stat()
    Image.new("RGB", (4, 4), (0, 250, 0)).save(path, format="BMP")  # same size, other bytes
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` or `rsync -t` leave it
    probed.clear()
    aligned, _ = align(image_config(photos), [("a.csv", rows(2))], memo)
    assert probed == ["1.png"]  # its change time moved: the kernel sets it on every write
    assert digests(aligned)["id-0001"] == sha256(path)


@pytest.mark.usefixtures("settled_at_once")
def test_a_file_that_does_not_decode_is_never_remembered(
    photos: Path, tmp_path: Path, probed: list[str]
) -> None:
    memo = tmp_path / "probes"
    (photos / "1.png").write_bytes(b"not an image")
    align(image_config(photos), [("a.csv", rows(2))], memo)
    probed.clear()
    aligned, report = align(image_config(photos), [("a.csv", rows(2))], memo)
    assert probed == ["1.png"]  # 0.png is remembered; 1.png is read every time
    assert report.files_undecodable == {"photo": 15}  # the rows that show it
    assert pd.isna(digests(aligned)["id-0001"])


def test_a_file_changed_just_before_it_was_probed_is_read_again(photos: Path, tmp_path: Path) -> None:
    memo = ProbeMemo(tmp_path / "probes", photos, "fp")
    fresh = (photos / "0.png").stat()
    memo.remember("0.png", fresh, "abc")  # written a moment ago: a second write could share its tick
    settled = stat_of(fresh.st_size, time.time_ns() - 10**10)
    memo.remember("1.png", settled, "def")
    memo.save()
    again = ProbeMemo(tmp_path / "probes", photos, "fp")
    assert again.digest("0.png", fresh) is None
    assert again.digest("1.png", settled) == "def"


def test_another_decoder_or_root_starts_a_memo_of_its_own(photos: Path, tmp_path: Path) -> None:
    old = stat_of(9, time.time_ns() - 60 * 10**9)
    memo = ProbeMemo(tmp_path / "probes", photos, "pillow==1")
    memo.remember("0.png", old, "abc")
    memo.save()
    assert ProbeMemo(tmp_path / "probes", photos, "pillow==1").digest("0.png", old) == "abc"
    assert ProbeMemo(tmp_path / "probes", photos, "pillow==2").digest("0.png", old) is None
    assert ProbeMemo(tmp_path / "probes", tmp_path, "pillow==1").digest("0.png", old) is None


def test_the_image_fingerprint_names_the_decoder_library() -> None:
    from importlib import metadata

    assert f"pillow=={metadata.version('pillow')}" in ImageModality().probe_fingerprint()


@pytest.mark.usefixtures("settled_at_once")
def test_a_damaged_memo_costs_a_full_pass_not_a_failure(
    photos: Path, tmp_path: Path, probed: list[str]
) -> None:
    memo = tmp_path / "probes"
    align(image_config(photos), [("a.csv", rows(2))], memo)
    for written in memo.iterdir():
        written.write_bytes(b"half a parquet file")
    probed.clear()
    aligned, _ = align(image_config(photos), [("a.csv", rows(2))], memo)
    assert sorted(probed) == ["0.png", "1.png"]
    assert digests(aligned)["id-0000"] == sha256(photos / "0.png")


@pytest.mark.usefixtures("settled_at_once")
def test_the_scheduled_monitor_s_read_of_the_sources_reads_only_new_files(
    photos: Path, tmp_path: Path, probed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monitor aligns every source row to find those the served model never saw."""
    from tasks.modalities.probe_memo import memo_folder
    from tasks.monitor.rows import batch_from_sources

    monkeypatch.chdir(tmp_path)
    data = image_config(photos)  # sources: items.csv
    rows(4).to_csv(tmp_path / "items.csv", index=False)
    batch_from_sources(data, memo_folder(".cache/features"))
    probed.clear()
    rows(6).to_csv(tmp_path / "items.csv", index=False)  # a drop adds rows with new photos
    aligned = batch_from_sources(data, memo_folder(".cache/features"))
    assert sorted(probed) == ["4.png", "5.png"]
    assert digests(aligned)["id-0004"] == sha256(photos / "4.png")
