"""The synthetic demo dataset: deterministic, idempotent, well-formed, and multimodal by design."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
from PIL import Image
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tasks.data import demo
from tasks.data.demo import COLUMNS, STAMP_NAME, generate_demo
from tasks.errors import ConfigError


def _make(root: Path, rows: int, seed: int = 7) -> tuple[Path, Path]:
    table, images = root / "demo.csv", root / "images"
    generate_demo(table, images, rows=rows, seed=seed)
    return table, images


def _read(table: Path) -> pd.DataFrame:
    return pd.read_csv(table, keep_default_na=False, dtype=str)


@pytest.fixture(scope="module")
def signal_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    table, images = _make(tmp_path_factory.mktemp("signal"), rows=600)
    return _read(table), images


def test_same_arguments_give_identical_bytes(tmp_path: Path) -> None:
    table_a, images_a = _make(tmp_path / "a", rows=24)
    table_b, images_b = _make(tmp_path / "b", rows=24)
    assert table_a.read_bytes() == table_b.read_bytes()
    names = sorted(p.name for p in images_a.glob("*.jpg"))
    assert names == sorted(p.name for p in images_b.glob("*.jpg"))
    assert all((images_a / n).read_bytes() == (images_b / n).read_bytes() for n in names)


def test_another_seed_gives_other_data(tmp_path: Path) -> None:
    table_a, _ = _make(tmp_path / "a", rows=24, seed=7)
    table_b, _ = _make(tmp_path / "b", rows=24, seed=8)
    assert table_a.read_bytes() != table_b.read_bytes()


def test_second_call_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table, images = _make(tmp_path, rows=16)
    before = {p: p.stat().st_mtime_ns for p in [table, *images.iterdir()]}

    def must_not_sample(*args: object) -> None:
        raise AssertionError("regenerated although the stamp matched")

    monkeypatch.setattr(demo, "_sample", must_not_sample)
    generate_demo(table, images, rows=16, seed=7)
    assert {p: p.stat().st_mtime_ns for p in [table, *images.iterdir()]} == before


def test_edited_csv_is_regenerated(tmp_path: Path) -> None:
    table, images = _make(tmp_path, rows=16)
    original = table.read_bytes()
    table.write_text("item_id\nitem-00001\n")
    generate_demo(table, images, rows=16, seed=7)
    assert table.read_bytes() == original


def test_new_arguments_regenerate_and_drop_stale_images(tmp_path: Path) -> None:
    table, images = _make(tmp_path, rows=30)
    (images / "notes.txt").write_text("not ours")
    generate_demo(table, images, rows=12, seed=7)
    assert len(_read(table)) == 12
    assert sorted(p.name for p in images.glob("*.jpg")) == [f"item-{i:05d}.jpg" for i in range(1, 13)]
    assert (images / "notes.txt").read_text() == "not ours"
    assert '"rows": 12' in (images / STAMP_NAME).read_text()


def test_csv_has_exact_columns_and_rows(tmp_path: Path) -> None:
    table, images = _make(tmp_path, rows=20)
    with table.open(newline="") as handle:
        header = next(csv.reader(handle))
    frame = _read(table)
    assert tuple(header) == COLUMNS
    assert len(frame) == 20
    assert list(frame.item_id) == [f"item-{i:05d}" for i in range(1, 21)]
    assert list(frame.photo) == [f"{item_id}.jpg" for item_id in frame.item_id]
    assert set(frame.label) <= {"0", "1"}
    assert all(frame.title.str.len() > 0)


def test_images_are_real_jpegs(tmp_path: Path) -> None:
    table, images = _make(tmp_path, rows=12)
    for name in _read(table).photo:
        with Image.open(images / name) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert image.size == (demo.IMAGE_SIZE, demo.IMAGE_SIZE)
            image.load()


def test_some_values_are_missing(signal_data: tuple[pd.DataFrame, Path]) -> None:
    frame, _ = signal_data
    for column, low, high in (("category", 0.02, 0.09), ("price", 0.02, 0.09), ("description", 0.01, 0.06)):
        share = (frame[column] == "").mean()
        assert low <= share <= high, (column, share)
    assert frame.category[frame.category != ""].nunique() == len(demo._CATEGORIES)


def test_labels_are_balanced(signal_data: tuple[pd.DataFrame, Path]) -> None:
    frame, _ = signal_data
    assert abs(frame.label.astype(int).mean() - 0.5) <= 0.01


def test_multiclass_label_is_the_quartile_of_the_score(signal_data: tuple[pd.DataFrame, Path]) -> None:
    frame, _ = signal_data
    classes, score = frame.label_multiclass.astype(int), frame.score.astype(float)
    assert classes.value_counts().sort_index().tolist() == [150, 150, 150, 150]
    assert all(score[classes == k].max() < score[classes == k + 1].min() for k in range(3))
    assert ((classes >= 2) == (frame.label == "1")).all()


def test_demo_targets_match_the_csv(tmp_path: Path) -> None:
    table, _ = _make(tmp_path, rows=24)
    frame = _read(table)
    targets = demo.demo_targets(rows=24, seed=7)
    assert targets["item_id"] == frame.item_id.tolist()
    assert [str(v) for v in targets["label"]] == frame.label.tolist()
    assert [str(v) for v in targets["label_multiclass"]] == frame.label_multiclass.tolist()
    assert [f"{v:.4f}" for v in targets["score"]] == frame.score.tolist()


def test_text_never_names_colour_or_shape(signal_data: tuple[pd.DataFrame, Path]) -> None:
    frame, _ = signal_data
    words = set(re.findall(r"[a-z]+", " ".join(frame.title + " " + frame.description).lower()))
    leaks = {c[0] for c in demo._COLOURS} | {s[0] for s in demo._SHAPES} | set(demo._TEXTURES)
    leaks |= {c[0] for c in demo._CATEGORIES}
    assert not words & leaks


def test_bad_arguments_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rows"):
        generate_demo(tmp_path / "t.csv", tmp_path / "img", rows=3)
    with pytest.raises(ConfigError, match="seed"):
        generate_demo(tmp_path / "t.csv", tmp_path / "img", rows=20, seed=-1)


# --- signal: cheap stand-ins for the frozen encoders -----------------------------------------


def image_proxy(images: Path, names: pd.Series) -> np.ndarray:
    """Colour histograms, the object's hue histogram and mean colour, two shape statistics
    (perimeter / sqrt(area), fill of the bounding box) and 4x4 grey pixels."""
    rows = []
    for name in names:
        with Image.open(images / name) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
            hue = np.asarray(image.convert("HSV"), dtype=np.float32)[..., 0]
            grey = np.asarray(image.convert("L").resize((4, 4), Image.Resampling.BOX), dtype=np.float32)
        histograms = [np.histogram(rgb[..., c], bins=8, range=(0, 256))[0] / hue.size for c in range(3)]
        obj = rgb.min(axis=2) < 205  # the background is pale, the object saturated
        area = max(int(obj.sum()), 1)
        hue_hist = np.bincount((hue[obj] * 12 / 256).astype(int), minlength=12) / area
        mean_colour = rgb[obj].mean(axis=0) / 255 if obj.any() else np.zeros(3)
        core = obj[1:-1, 1:-1] & obj[:-2, 1:-1] & obj[2:, 1:-1] & obj[1:-1, :-2] & obj[1:-1, 2:]
        ys, xs = np.nonzero(obj) if obj.any() else (np.zeros(1), np.zeros(1))
        shape = [(area - core.sum()) / np.sqrt(area), area / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))]
        rows.append(np.concatenate([*histograms, hue_hist, mean_colour, shape, grey.ravel() / 255]))
    return np.stack(rows)


def audio_proxy(audio: Path, names: pd.Series) -> np.ndarray:
    """Log energy in 32 log-spaced bands (the pitch) and how many bursts the envelope has."""
    rows = []
    for name in names:
        samples, rate = soundfile.read(audio / name, dtype="float32")
        spectrum = np.abs(np.fft.rfft(samples))
        frequencies = np.fft.rfftfreq(len(samples), 1 / rate)
        edges = np.geomspace(150, rate / 2, 33)
        bands = [
            spectrum[(frequencies >= lo) & (frequencies < hi)].sum()
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)
        ]
        envelope = np.convolve(np.abs(samples), np.ones(160) / 160, mode="same")
        loud = envelope > 0.5 * envelope.max()
        bursts = int(np.count_nonzero(loud[1:] & ~loud[:-1]))
        rows.append(np.concatenate([np.log1p(bands), np.eye(6)[min(bursts, 5)]]))
    return np.stack(rows)


def text_proxy(frame: pd.DataFrame) -> object:
    return TfidfVectorizer(sublinear_tf=True).fit_transform(frame.title + " " + frame.description)


def tabular_proxy(frame: pd.DataFrame) -> np.ndarray:
    log_price = np.log(pd.to_numeric(frame.price.replace("", np.nan)))
    missing = log_price.isna().to_numpy(float)
    return np.column_stack(
        [pd.get_dummies(frame.category).to_numpy(float), log_price.fillna(log_price.median()), missing]
    )


def _oof(features: object, y: np.ndarray, c: float, scale: bool) -> np.ndarray:
    """Out-of-fold P(label=1) from a 5-fold cross-validated logistic regression."""
    model = LogisticRegression(C=c, max_iter=3000)
    estimator = make_pipeline(StandardScaler(), model) if scale else model
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return cross_val_predict(estimator, features, y, cv=folds, method="predict_proba")[:, 1]


def proxy_aucs(frame: pd.DataFrame, images: Path) -> dict[str, float]:
    """AUC per modality, and of a late fusion (stacked out-of-fold logits) of all four."""
    y = frame.label.astype(int).to_numpy()
    probs = {
        "image": _oof(image_proxy(images, frame.photo), y, c=0.03, scale=True),
        "audio": _oof(audio_proxy(images.parent / "audio", frame["clip"]), y, c=0.1, scale=True),
        "text": _oof(text_proxy(frame), y, c=3.0, scale=False),
        "tabular": _oof(tabular_proxy(frame), y, c=1.0, scale=True),
    }
    aucs = {name: float(roc_auc_score(y, p)) for name, p in probs.items()}
    logits = np.column_stack([np.log(p / (1 - p)) for p in probs.values()])
    aucs["all"] = float(roc_auc_score(y, _oof(logits, y, c=1.0, scale=False)))
    return aucs


def test_every_modality_carries_signal_and_fusion_wins(signal_data: tuple[pd.DataFrame, Path]) -> None:
    aucs = proxy_aucs(*signal_data)
    for name in ("image", "text", "tabular", "audio"):
        assert 0.55 <= aucs[name] <= 0.85, aucs
    best_single = max(aucs["image"], aucs["text"], aucs["tabular"], aucs["audio"])
    assert aucs["all"] >= best_single + 0.08, aucs
