"""A deterministic synthetic multimodal dataset: a product table, free text, a photo and a sound per row.

The demo exists to show (and test) that the fusion model earns its keep, so the label is
built to need all four modalities:

    score = s_image + s_text + s_tab + s_audio + noise          label = score > median(score)

The same latent score also gives the other task variants, for comparing heads on every
task without new data: `label_multiclass` is its quartile (0..3, balanced; 2 and 3 are the
rows with label 1) and `score` itself (rounded to 4 decimals) is a regression target. Use
them with `-S data.target=label_multiclass -S data.task=multiclass` or `data.target=score`
with `data.task=regression`.

Each part is standardised to unit variance and the noise has standard deviation 0.9. With
four independent unit-variance parts, knowing one part perfectly gives a ROC AUC of about
0.70, knowing all four about 0.94; thresholding at the median makes the classes balanced.
No part is recoverable from another modality, so no single modality can stand in for the rest.

s_image - from what a frozen ImageNet CNN sees at a glance: the object's dominant colour
    (red / yellow / green / blue / purple; 60% of the variance) and its shape (circle /
    square / triangle / star; 40%). Texture (plain / stripes / dots) carries no signal and,
    with position, size and rotation jitter, a pale background tint and pixel noise, is
    there so the features have to generalise rather than match a template.
s_text - from words a sentence embedding picks up: a five-step quality level (80% of the
    variance; each step has its own pool of adjectives, "excellent, superb" / "sturdy,
    well-made" / "ordinary, average" / "flimsy, wobbly" / "cheap, disappointing") said in one
    of several sentence templates, and the material named in the title (20%; oak and steel
    good, plastic and cardboard bad). Filler sentences that say nothing dilute the
    description and a row uses one or two of its level's words, so no keyword decides it.
    The text never names colour, shape, category or price, which would leak other parts.
    About 3% of descriptions are empty (a real missing-text case): those rows keep only the
    material from the title.
s_tab - half from `category` (six values with different effects and frequencies), half from
    log `price`. Each is blanked independently in about 5% of rows *after* the label is
    computed, so missing values lose signal as they would in real data.
s_audio - from a 2-second, 8 kHz mono WAV (`clip`, under the audio root): the pitch of a
    repeated harmonic tone (five notes from 220 to 1109 Hz; 60% of the variance) and how
    many times it sounds (1 to 4 beeps; 40%). The colour of the background noise (white,
    pink, brown), the loudness, the timing jitter and the noise level carry no signal.
    Drawn from its own random stream, so adding audio left every other column's values as
    they were (only the score, and so the labels, changed).

Determinism: everything is drawn from one numpy Generator(seed) in a fixed order (per-image
pixel noise uses seeds drawn from it), images are rendered by PIL and saved with fixed JPEG
settings, so the same (rows, seed) gives byte-identical files with the same Pillow/libjpeg.
A stamp file in image_root (rows, seed, generator version, Pillow version, CSV digest) makes
a repeated call a no-op; bump GENERATOR_VERSION whenever the output would change.
"""

from __future__ import annotations

import colorsys
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
import soundfile
from PIL import Image, ImageDraw
from tqdm import tqdm

from tasks.atomic import atomic_path, write_bytes, write_json
from tasks.errors import ConfigError, DataError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 3  # 2: label_multiclass and score columns; 3: the audio clip
STAMP_NAME = ".demo-stamp.json"
COLUMNS = (
    "item_id", "title", "description", "category", "price", "photo", "clip", "label", "label_multiclass",
    "score",
)  # fmt: skip
_MULTICLASS_QUANTILES = (0.25, 0.5, 0.75)
MIN_ROWS = 10

IMAGE_SIZE = 96
_SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges at little cost
_JPEG_SETTINGS = {"format": "JPEG", "quality": 90, "subsampling": 2, "optimize": False, "progressive": False}

_NOISE_SD = 0.9
_MISSING_CATEGORY = 0.05
_MISSING_PRICE = 0.05
_EMPTY_DESCRIPTION = 0.03

# --- image vocabulary: (name, base hue in degrees, effect) -------------------------------
_COLOURS = (
    ("red", 0.0, 1.0),
    ("yellow", 52.0, 0.45),
    ("green", 125.0, -0.1),
    ("blue", 220.0, -0.55),
    ("purple", 285.0, -0.95),
)
_SHAPES = (("star", 1.0), ("circle", 0.35), ("square", -0.35), ("triangle", -1.0))
_TEXTURES = ("plain", "stripes", "dots")

# --- text vocabulary ----------------------------------------------------------------------
# Quality levels from worst (-2) to best (+2); a row's words all come from its level's pool.
_QUALITY_WORDS = (
    ("cheap", "disappointing", "defective", "terrible", "useless"),
    ("flimsy", "wobbly", "fragile", "mediocre", "shoddy"),
    ("ordinary", "standard", "average", "unremarkable", "adequate"),
    ("sturdy", "well-made", "reliable", "solid", "durable"),
    ("excellent", "superb", "outstanding", "exceptional", "flawless"),
)
_QUALITY_CUTS = (-1.2, -0.4, 0.4, 1.2)  # bins of a standard normal -> level 0..4
_QUALITY_TEMPLATES = (
    "Reviewers call it {a} and {b}.",
    "It feels {a} in everyday use.",
    "Buyers describe the build as {a}.",
    "Most owners found it {a}, even {b}.",
    "The finish is {a} and the joints are {b}.",
    "In short: {a}.",
    "Quality is {a}, according to recent reviews.",
    "After a month of use it still seems {a}.",
)
_MATERIALS = (
    ("oak", 1.0),
    ("stainless steel", 0.6),
    ("bamboo", 0.2),
    ("canvas", -0.2),
    ("plastic", -0.6),
    ("cardboard", -1.0),
)
_MATERIAL_TEMPLATES = (
    "Made from {m}.",
    "The main body is {m}.",
    "Built around a {m} frame.",
    "Crafted from {m} throughout.",
)
_FILLERS = (
    "Ships flat-packed with all fittings included.",
    "Wipe clean with a damp cloth.",
    "Comes with a one-year limited warranty.",
    "Assembly takes about ten minutes.",
    "Fits neatly on a shelf or countertop.",
    "Designed in a small studio and tested in-house.",
    "Spare parts are available on request.",
    "Please check the dimensions before ordering.",
    "Suitable for indoor use.",
    "Sold as a single unit.",
)
_BRANDS = ("Norvik", "Ashby", "Kestrel", "Lumo", "Verdane", "Tallis", "Halden", "Orrin")
_NOUNS = (
    "organizer",
    "tray",
    "storage box",
    "stand",
    "holder",
    "rack",
    "caddy",
    "bin",
    "shelf unit",
    "crate",
)
_TITLE_TEMPLATES = (
    "{brand} {Material} {noun}",
    "{Material} {noun} by {brand}",
    "{brand} {noun}, {material}",
    "{brand} {model} {Material} {noun}",
)

# --- tabular vocabulary: (category, frequency, effect) ------------------------------------
# audio: 8 kHz mono, 2 s; pitch (Hz, effect) and beep count (effect) carry s_audio
AUDIO_RATE = 8000
AUDIO_SECONDS = 2.0
_PITCHES = ((220.0, -1.0), (330.0, -0.5), (494.0, 0.0), (740.0, 0.5), (1109.0, 1.0))
_BEEPS = ((1, -1.0), (2, -0.35), (3, 0.35), (4, 1.0))
_NOISE_COLOURS = (0.0, 1.0, 2.0)  # spectral slope: white, pink, brown
_AUDIO_STREAM = 1  # the audio draws' own SeedSequence stream: other columns keep their values

_CATEGORIES = (
    ("kitchen", 0.24, 1.0),
    ("office", 0.20, 0.5),
    ("garden", 0.17, 0.0),
    ("bathroom", 0.15, -0.3),
    ("nursery", 0.13, -0.7),
    ("workshop", 0.11, -1.1),
)
_LOG_PRICE_MEAN = math.log(35.0)
_LOG_PRICE_SD = 0.55


def generate_demo(
    table_path: Path, image_root: Path, rows: int = 2000, seed: int = 7, audio_root: Path | None = None
) -> None:
    """Write the demo CSV at `table_path`, one JPEG per row under `image_root` and one WAV per
    row under `audio_root` (default: `audio` beside `image_root`).

    Columns: item_id, title, description, category, price, photo, clip, label,
    label_multiclass, score (see the module docstring for how the targets depend on the
    others). `photo` is relative to `image_root`, `clip` to `audio_root`.
    Same (rows, seed) -> byte-identical output; a repeat call with an intact stamp, CSV and
    images returns at once. Otherwise everything is rewritten and `item-*.jpg` files left
    over from an earlier, larger run are removed.
    """
    table_path, image_root = Path(table_path), Path(image_root)
    audio_root = image_root.parent / "audio" if audio_root is None else Path(audio_root)
    _check_args(rows, seed)
    for root, key in ((image_root, "image_root"), (audio_root, "audio_root")):
        if root.exists() and not root.is_dir():
            raise DataError(f"{key} exists and is not a directory", file=str(root))
    if table_path.is_dir():
        raise DataError("table path is a directory, expected a CSV file path", file=str(table_path))

    stamp_path = image_root / STAMP_NAME
    names = [f"{item_id}.jpg" for item_id in _item_ids(rows)]
    clips = [f"{item_id}.wav" for item_id in _item_ids(rows)]
    if _is_current(stamp_path, table_path, image_root, names, rows, seed) and all(
        (audio_root / clip).is_file() for clip in clips
    ):
        log.info("demo data at %s is up to date (rows=%d, seed=%d); skipping", table_path, rows, seed)
        return

    image_root.mkdir(parents=True, exist_ok=True)
    audio_root.mkdir(parents=True, exist_ok=True)
    stamp_path.unlink(missing_ok=True)  # never leave a stamp that vouches for half-new files
    data = _sample(rows, seed)

    def render_one(i: int) -> None:
        write_bytes(_render_image(data, i), image_root / names[i])
        write_bytes(_render_audio(data, i), audio_root / clips[i])

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in tqdm(
            pool.map(render_one, range(rows)), total=rows, desc="demo images and clips", unit="row"
        ):
            pass
    _remove_stale(image_root, set(names))
    _remove_stale(audio_root, set(clips))

    text = _to_csv(data, names, clips)
    with atomic_path(table_path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))
    write_json(_stamp(rows, seed, hashlib.sha256(text.encode("utf-8")).hexdigest()), stamp_path)
    log.info("wrote %d demo rows to %s, images to %s, clips to %s", rows, table_path, image_root, audio_root)


def demo_table(rows: int, seed: int = 7) -> pd.DataFrame:
    """The demo's text and tabular columns and targets, without rendering an image or a clip.

    For benchmarks at a scale (a million rows) where files per row would measure the disk,
    not the pipeline. Values equal the CSV's for the same (rows, seed); the label still
    depends on the image and audio parts, so it is noisier to learn from these columns alone.
    """
    data = _sample(rows, seed)
    names = np.array([c[0] for c in _CATEGORIES] + [None], dtype=object)
    return pd.DataFrame(
        {
            "item_id": data.item_ids,
            "title": data.titles,
            "description": data.descriptions,
            "category": names[data.category],  # -1 (missing) picks the trailing None
            "price": data.price,
            "label": data.label,
            "label_multiclass": data.label_multiclass,
            "score": np.round(data.score, 4),
        }
    )


def demo_targets(rows: int = 2000, seed: int = 7) -> dict[str, list]:
    """The targets of the demo rows (item_id, label, label_multiclass, score), without images.

    What the CSV holds for the same (rows, seed), computed in a fraction of a second: the
    heads benchmark uses it to train on every task variant from features cached for one.
    """
    _check_args(rows, seed)
    data = _sample(rows, seed)
    return {
        "item_id": list(data.item_ids),
        "label": data.label.tolist(),
        "label_multiclass": data.label_multiclass.tolist(),
        "score": [round(float(v), 4) for v in data.score],
    }


# --- sampling -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    """Everything drawn for one dataset; arrays are (rows,). Latent parts kept for diagnostics."""

    item_ids: list[str]
    titles: list[str]
    descriptions: list[str]
    category: np.ndarray  # index into _CATEGORIES, -1 where missing
    price: np.ndarray  # NaN where missing
    label: np.ndarray
    label_multiclass: np.ndarray  # quartile of score, 0..3
    score: np.ndarray  # the latent score, noise included
    s_image: np.ndarray
    s_text: np.ndarray
    s_tab: np.ndarray
    s_audio: np.ndarray
    # audio drawing parameters
    pitch: np.ndarray  # index into _PITCHES
    beeps: np.ndarray  # index into _BEEPS
    noise_colour: np.ndarray
    audio_seed: np.ndarray
    # image drawing parameters
    colour: np.ndarray
    hue: np.ndarray
    sat: np.ndarray
    val: np.ndarray
    shape: np.ndarray
    texture: np.ndarray
    centre: np.ndarray  # (rows, 2) in output pixels
    radius: np.ndarray
    angle: np.ndarray
    background: np.ndarray  # (rows, 3) uint8
    stripe_angle: np.ndarray
    spacing: np.ndarray
    pixel_seed: np.ndarray


def _sample(rows: int, seed: int) -> _Rows:
    rng = np.random.default_rng(seed)

    # image
    colour = rng.integers(0, len(_COLOURS), rows)
    shape = rng.integers(0, len(_SHAPES), rows)
    texture = rng.integers(0, len(_TEXTURES), rows)
    hue = (np.array([c[1] for c in _COLOURS])[colour] + rng.uniform(-8, 8, rows)) % 360
    sat = rng.uniform(0.65, 0.95, rows)
    val = rng.uniform(0.6, 0.95, rows)
    centre = IMAGE_SIZE / 2 + rng.uniform(-12, 12, (rows, 2))
    radius = rng.uniform(22, 33, rows)
    angle = rng.uniform(0, 2 * math.pi, rows)
    tint = rng.uniform(0, 1, (rows, 3))
    background = np.round(225 + 25 * tint).astype(np.uint8)  # pale, low-saturation
    stripe_angle = rng.uniform(0, math.pi, rows)
    spacing = rng.uniform(7, 11, rows)
    pixel_seed = rng.integers(0, 2**63 - 1, rows, dtype=np.int64)
    colour_part = _standardise([c[2] for c in _COLOURS], None)[colour]
    shape_part = _standardise([s[1] for s in _SHAPES], None)[shape]
    s_image = math.sqrt(0.6) * colour_part + math.sqrt(0.4) * shape_part

    # text
    quality = np.digitize(rng.standard_normal(rows), _QUALITY_CUTS)
    material = rng.integers(0, len(_MATERIALS), rows)
    quality_probs = np.diff(np.concatenate([[0.0], [_normal_cdf(c) for c in _QUALITY_CUTS], [1.0]]))
    quality_part = _standardise(list(range(-2, 3)), quality_probs)[quality]
    material_part = _standardise([m[1] for m in _MATERIALS], None)[material]
    s_text = math.sqrt(0.8) * quality_part + math.sqrt(0.2) * material_part
    empty = rng.random(rows) < _EMPTY_DESCRIPTION
    titles = [_title(rng, material[i]) for i in range(rows)]
    descriptions = ["" if empty[i] else _description(rng, quality[i], material[i]) for i in range(rows)]

    # tabular
    cat_probs = np.array([c[1] for c in _CATEGORIES])
    category = rng.choice(len(_CATEGORIES), rows, p=cat_probs / cat_probs.sum())
    log_price = rng.normal(_LOG_PRICE_MEAN, _LOG_PRICE_SD, rows)
    price = np.round(np.exp(log_price), 2)
    category_part = _standardise([c[2] for c in _CATEGORIES], cat_probs)[category]
    price_part = (log_price - _LOG_PRICE_MEAN) / _LOG_PRICE_SD
    s_tab = math.sqrt(0.5) * category_part + math.sqrt(0.5) * price_part

    audio = _sample_audio(rows, seed)
    score = s_image + s_text + s_tab + audio["s_audio"] + _NOISE_SD * rng.standard_normal(rows)
    label = (score > np.median(score)).astype(np.int64)
    # Derived from the score alone (no random draws), so every other column is unchanged.
    label_multiclass = np.searchsorted(np.quantile(score, _MULTICLASS_QUANTILES), score, side="right")

    # blank some tabular values after the label is fixed: missing values lose their signal
    category = np.where(rng.random(rows) < _MISSING_CATEGORY, -1, category)
    price = np.where(rng.random(rows) < _MISSING_PRICE, np.nan, price)

    return _Rows(
        item_ids=_item_ids(rows), titles=titles, descriptions=descriptions, category=category,
        price=price, label=label, label_multiclass=label_multiclass, score=score, s_image=s_image,
        s_text=s_text, s_tab=s_tab, colour=colour, hue=hue, sat=sat, val=val, shape=shape,
        texture=texture, centre=centre, radius=radius,
        angle=angle, background=background, stripe_angle=stripe_angle, spacing=spacing,
        pixel_seed=pixel_seed, **audio,
    )  # fmt: skip


def _sample_audio(rows: int, seed: int) -> dict[str, np.ndarray]:
    """The audio draws, from their own stream (SeedSequence([seed, stream]))."""
    rng = np.random.default_rng([seed, _AUDIO_STREAM])
    pitch = rng.integers(0, len(_PITCHES), rows)
    beeps = rng.integers(0, len(_BEEPS), rows)
    noise_colour = rng.integers(0, len(_NOISE_COLOURS), rows)
    audio_seed = rng.integers(0, 2**63 - 1, rows, dtype=np.int64)
    pitch_part = _standardise([p[1] for p in _PITCHES], None)[pitch]
    beeps_part = _standardise([b[1] for b in _BEEPS], None)[beeps]
    s_audio = math.sqrt(0.6) * pitch_part + math.sqrt(0.4) * beeps_part
    return {
        "s_audio": s_audio,
        "pitch": pitch,
        "beeps": beeps,
        "noise_colour": noise_colour,
        "audio_seed": audio_seed,
    }


def _render_audio(data: _Rows, i: int) -> bytes:
    """A 16-bit WAV: `beeps` harmonic tone bursts at the row's pitch over coloured noise."""
    rng = np.random.default_rng(int(data.audio_seed[i]))
    n = int(AUDIO_SECONDS * AUDIO_RATE)
    t = np.arange(n) / AUDIO_RATE
    frequency = _PITCHES[int(data.pitch[i])][0] * rng.uniform(0.98, 1.02)
    tone = sum(
        amplitude * np.sin(2 * np.pi * k * frequency * t) for k, amplitude in ((1, 1.0), (2, 0.5), (3, 0.25))
    )
    count = _BEEPS[int(data.beeps[i])][0]
    envelope = np.zeros(n)
    length, fade = int(0.18 * AUDIO_RATE), int(0.01 * AUDIO_RATE)
    ramp = np.minimum(1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / fade)
    for k in range(count):
        centre = (k + 0.5) / count * n + rng.uniform(-0.04, 0.04) * n
        start = int(np.clip(centre - length / 2, 0, n - length))
        envelope[start : start + length] = ramp
    noise = _coloured_noise(rng, n, _NOISE_COLOURS[int(data.noise_colour[i])])
    signal = tone * envelope / 1.75 + noise * rng.uniform(0.05, 0.2)
    signal *= rng.uniform(0.3, 0.8) / max(float(np.abs(signal).max()), 1e-9)
    buffer = io.BytesIO()
    soundfile.write(buffer, signal.astype(np.float32), AUDIO_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _coloured_noise(rng: np.random.Generator, n: int, slope: float) -> np.ndarray:
    """Unit-peak noise whose power falls as 1/f**slope (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequencies = np.fft.rfftfreq(n)
    frequencies[0] = frequencies[1]
    noise = np.fft.irfft(spectrum / frequencies ** (slope / 2), n)
    return noise / max(float(np.abs(noise).max()), 1e-9)


def _standardise(effects: Sequence[float], probs: np.ndarray | Sequence[float] | None) -> np.ndarray:
    """Effects rescaled to mean 0, variance 1 under the sampling distribution (uniform if None)."""
    values = np.asarray(effects, dtype=np.float64)
    p = np.full(len(values), 1 / len(values)) if probs is None else np.asarray(probs, dtype=np.float64)
    p = p / p.sum()
    mean = float(p @ values)
    sd = math.sqrt(float(p @ (values - mean) ** 2))
    return (values - mean) / sd


def _normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _title(rng: np.random.Generator, material: int) -> str:
    name = _MATERIALS[material][0]
    return _pick(rng, _TITLE_TEMPLATES).format(
        brand=_pick(rng, _BRANDS),
        noun=_pick(rng, _NOUNS),
        material=name,
        Material=name.title(),
        model=f"{'ABCDEFGHKMRTX'[int(rng.integers(13))]}-{int(rng.integers(10, 100))}",
    )


def _description(rng: np.random.Generator, quality: int, material: int) -> str:
    """1-3 sentences: the quality sentence, plus a material line and/or fillers, shuffled."""
    a, b = rng.choice(_QUALITY_WORDS[quality], 2, replace=False)
    sentences = [_pick(rng, _QUALITY_TEMPLATES).format(a=a, b=b)]
    count = int(rng.choice(3, p=[0.25, 0.4, 0.35])) + 1
    fillers = [int(f) for f in rng.choice(len(_FILLERS), 2, replace=False)]
    if count >= 2:
        if rng.random() < 0.5:
            sentences.append(_pick(rng, _MATERIAL_TEMPLATES).format(m=_MATERIALS[material][0]))
        else:
            sentences.append(_FILLERS[fillers.pop()])
    if count == 3:
        sentences.append(_FILLERS[fillers.pop()])
    order = rng.permutation(len(sentences))
    return " ".join(sentences[int(k)] for k in order)


# --- images -------------------------------------------------------------------------------


def _render_image(data: _Rows, i: int) -> bytes:
    """One 96x96 RGB JPEG: a textured, coloured shape on a pale tinted background."""
    s = _SUPERSAMPLE
    big = IMAGE_SIZE * s
    r, g, b = colorsys.hsv_to_rgb(float(data.hue[i]) / 360, float(data.sat[i]), float(data.val[i]))
    fill = (round(r * 255), round(g * 255), round(b * 255))
    cx, cy = (float(v) * s for v in data.centre[i])
    radius = float(data.radius[i]) * s
    angle = float(data.angle[i])

    mask = Image.new("L", (big, big), 0)
    _draw_shape(ImageDraw.Draw(mask), _SHAPES[int(data.shape[i])][0], cx, cy, radius, angle)

    obj = Image.new("RGB", (big, big), fill)
    draw = ImageDraw.Draw(obj)
    texture = _TEXTURES[int(data.texture[i])]
    step = float(data.spacing[i]) * s
    if texture == "stripes":
        dark = tuple(round(c * 0.55) for c in fill)
        dx, dy = math.cos(float(data.stripe_angle[i])), math.sin(float(data.stripe_angle[i]))
        reach = big * 1.5
        for k in range(-int(reach / step), int(reach / step) + 1):
            ox, oy = cx - dy * k * step, cy + dx * k * step
            draw.line(
                [(ox - dx * reach, oy - dy * reach), (ox + dx * reach, oy + dy * reach)],
                fill=dark,
                width=int(1.5 * s),
            )
    elif texture == "dots":
        light = tuple(round(c + (255 - c) * 0.6) for c in fill)
        dot = 1.4 * s
        n = int(big / step) + 2
        for row in range(n):
            for col in range(n):
                x = col * step + (step / 2 if row % 2 else 0)
                y = row * step
                draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=light)

    canvas = Image.new("RGB", (big, big), tuple(int(c) for c in data.background[i]))
    canvas.paste(obj, (0, 0), mask)
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)

    noise = np.random.default_rng(int(data.pixel_seed[i])).integers(
        -6, 7, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int16
    )
    pixels = np.clip(np.asarray(small, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, **_JPEG_SETTINGS)
    return buffer.getvalue()


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, angle: float
) -> None:
    if shape == "circle":
        r = radius * 0.85
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        return
    if shape == "star":
        radii = [radius if k % 2 == 0 else radius * 0.45 for k in range(10)]
    else:
        radii = [radius] * (3 if shape == "triangle" else 4)
    n = len(radii)
    points = [
        (cx + rk * math.cos(angle + 2 * math.pi * k / n), cy + rk * math.sin(angle + 2 * math.pi * k / n))
        for k, rk in enumerate(radii)
    ]
    draw.polygon(points, fill=255)


# --- files --------------------------------------------------------------------------------


def _item_ids(rows: int) -> list[str]:
    width = max(5, len(str(rows)))
    return [f"item-{i:0{width}d}" for i in range(1, rows + 1)]


def _to_csv(data: _Rows, names: list[str], clips: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for i, item_id in enumerate(data.item_ids):
        category = "" if data.category[i] < 0 else _CATEGORIES[int(data.category[i])][0]
        price = "" if np.isnan(data.price[i]) else f"{float(data.price[i]):.2f}"
        writer.writerow(
            [
                item_id,
                data.titles[i],
                data.descriptions[i],
                category,
                price,
                names[i],
                clips[i],
                int(data.label[i]),
                int(data.label_multiclass[i]),
                f"{float(data.score[i]):.4f}",
            ]  # fmt: skip
        )
    return out.getvalue()


_IMAGE_NAME = re.compile(r"item-\d+\.(jpg|wav)")
_TEMP_NAME = re.compile(r"\.item-\d+\.(jpg|wav)\..*\.tmp")


def _remove_stale(image_root: Path, keep: set[str]) -> None:
    """Delete demo images (and temp files of killed writes) that the current run did not make.

    Only names this module produces are touched; anything else in image_root is left alone.
    """
    for entry in image_root.iterdir():
        name = entry.name
        if (_IMAGE_NAME.fullmatch(name) and name not in keep) or _TEMP_NAME.fullmatch(name):
            entry.unlink(missing_ok=True)


def _stamp(rows: int, seed: int, csv_sha256: str) -> dict[str, object]:
    return {
        "generator_version": GENERATOR_VERSION,
        "rows": rows,
        "seed": seed,
        "pillow": PIL.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
        "csv_sha256": csv_sha256,
    }


def _is_current(
    stamp_path: Path, table_path: Path, image_root: Path, names: list[str], rows: int, seed: int
) -> bool:
    """True when the stamp matches these arguments and the CSV and every image are in place."""
    try:
        stamp = json.loads(stamp_path.read_text())
        table = table_path.read_bytes()
    except (OSError, ValueError):
        return False
    if stamp != _stamp(rows, seed, hashlib.sha256(table).hexdigest()):
        return False
    return all((image_root / name).is_file() for name in names)


def _check_args(rows: object, seed: object) -> None:
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < MIN_ROWS:
        raise ConfigError(f"demo.rows must be an integer >= {MIN_ROWS}, got {rows!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"demo.seed must be a non-negative integer, got {seed!r}")


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m tasks.data.demo TABLE IMAGE_ROOT [--rows N] [--seed S]`"""
    import argparse

    parser = argparse.ArgumentParser(description="Render the synthetic fuseline demo dataset.")
    parser.add_argument("table", type=Path)
    parser.add_argument("image_root", type=Path)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate_demo(args.table, args.image_root, rows=args.rows, seed=args.seed)


if __name__ == "__main__":
    main()
