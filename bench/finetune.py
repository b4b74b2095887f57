"""Benchmark fine-tuning an encoder's top (text: top layers; images: last blocks) against one
frozen extraction pass.

    python bench/finetune.py [--modality text|image|both] [--json] [--rows N] [--layers 2]
                             [--epochs E] [--rounds R] [--device cpu] [--images N] [--image-size S]
                             [--threads T]

Text (`--modality text`):

On the same texts in one process (petfinder `Description` -> `AdoptionSpeed` from
../shared/data/petfinder when present, val carved from its train rows; else synthetic texts):

- frozen pass (a): the full encoder over the distinct train texts, no gradients, batch
  `encoders.text.batch_size`, texts sorted by length first, exactly as extraction encodes
  them (tasks.modalities.text: encoding_order, then encode_sorted_texts); tokenising included.
- lower cache: the one-off pass through the frozen lower L - N layers that fills the
  hidden-state cache (train texts, then the rest), reported apart from the epochs.
- epoch (b): one epoch of tasks.train.finetuned_member.train_finetuned over the train rows, lower
  states already cached: length-bucketed shuffled batches of `finetune.batch_size`, top N layers
  and the fusion head forward + backward + AdamW step (attention-probability dropout off in the
  trained layers, tasks.modalities.text.ATTENTION_DROPOUT). `ratio` = (b) / (a), target <= 1.2;
  `ratio_with_val` also counts the epoch's validation pass. One epoch of fine-tuning all L
  layers (train and val rows) is timed the same way for comparison.
- quality: the same fusion head (params.yaml `fusion:`) on frozen embeddings (train_model) vs
  the model fine-tuned for `finetune.epochs`, val and test accuracy and macro-F1, on the text
  column alone, so the difference is the encoder's.

Images (`--modality image`), on flipkart product photos -> `category_l1` (7 classes) from
../shared/data/flipkart_products when present (skipped, and said so, when absent): `--images`
photos sampled evenly per class, split 60/20/20 per class, EfficientNet-Lite0 at `--image-size`:

- frozen pass (a): extraction's own path over the train images (decoded and verified ahead
  of the forward, normalised, channels_last: tasks.modalities.image.decoded_batches +
  encode_image_batches), batch `encoders.image.batch_size`.
- lower cache: the one-off pass through the frozen stem and first blocks that fills the
  feature-map cache, per split point, reported apart from the epochs.
- epoch (b): one epoch of the same train_finetuned over the train rows, maps cached: the
  last 1 and the last 2 blocks, head conv and pooling plus the fusion head, forward +
  backward + AdamW step. `ratio` = (b) / (a), paired and best-of as for text.
- quality: the same fusion head on frozen embeddings vs the models fine-tuned for
  `finetune.epochs` (last 1 and last 2 blocks), val and test accuracy and macro-F1, on the
  image column alone.

On a shared CPU noise only ever slows a pass down, so (a) and (b) alternate in `--rounds`
pairs and each side reports its best; `paired_ratios` are the per-round ones and the load
average at start and end says how shared the machine was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd
import torch
import yaml
from sklearn.metrics import accuracy_score, f1_score

from modelzoo.encoders.base import ImageEncoder
from modelzoo.encoders.huggingface import HuggingFaceTextEncoder
from modelzoo.encoders.image_finetune import ImageTop
from modelzoo.encoders.loading import load_image_encoder, load_text_encoder
from modelzoo.encoders.text_finetune import TextTop
from tasks.cache_keys import text_digest
from tasks.config import FusionConfig, TrainConfig
from tasks.device import pick_device
from tasks.modalities import modality
from tasks.modalities.base import FineTuning
from tasks.modalities.image import ImageEncoderConfig, close_batches, decoded_batches, encode_image_batches
from tasks.modalities.text import TextEncoderConfig, encode_sorted_texts
from tasks.schema import DIGEST, ID, PRESENT
from tasks.train.dataset import FeatureSet
from tasks.train.finetune_loop import BUCKET_BATCHES, FineTuned
from tasks.train.finetuned_member import fine_tuning, predict_finetuned, train_finetuned
from tasks.train.lower_cache import LowerOutputCache
from tasks.train.training import predict, train_model

REPO = Path(__file__).resolve().parents[1]
PETFINDER = REPO.parent / "shared" / "data" / "petfinder" / "petfinder.csv"
TARGETS = {"ratio": 1.2}
DEFAULT_ROWS = 2000  # about 6 minutes on 2 quiet cores; --rows 0 takes all 3,000
FLIPKART = REPO.parent / "shared" / "data" / "flipkart_products" / "flipkart_products.csv"
DEFAULT_IMAGES = 420  # 60 per class; the image part takes a few minutes on 2 cores
DEFAULT_IMAGE_SIZE = 224  # params.yaml's: lite0's last blocks then see 7 x 7 maps
IMAGE_BLOCKS = (1, 2)  # last blocks fine-tuned, each timed and scored
IMAGE_COLUMN = "photo"
VAL_SHARE = 0.2  # of petfinder's train rows: it ships train and test only
COLUMN = "text"


# --- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Texts:
    source: str
    texts: list[str | None]
    label: np.ndarray  # (N,) int64 class
    split: np.ndarray  # (N,) train | val | test
    classes: tuple[str, ...]

    def of(self, name: str) -> list[str]:
        """The distinct texts of a split: what extraction would encode for it."""
        pairs = zip(self.texts, self.split, strict=True)
        return sorted({t for t, s in pairs if s == name and isinstance(t, str) and t.strip()})

    def without(self, name: str) -> Texts:
        keep = self.split != name
        texts = [t for t, k in zip(self.texts, keep, strict=True) if k]
        return Texts(self.source, texts, self.label[keep], self.split[keep], self.classes)

    def rows(self) -> pd.DataFrame:
        """Aligned-like rows, as the fine-tuned member reads them: the texts and their presence."""
        return pd.DataFrame(
            {
                ID: [f"r{i}" for i in range(len(self.texts))],
                COLUMN: pd.Series(self.texts, dtype="string"),
                PRESENT + COLUMN: [_real(t) for t in self.texts],
            }
        )


def _real(text: str | None) -> bool:
    return isinstance(text, str) and text.strip() != ""


def load_texts(path: Path, rows: int | None, seed: int) -> Texts:
    """petfinder when it is there (val carved from train), else synthetic texts."""
    rng = np.random.default_rng(seed)
    if not path.is_file():
        return synthetic_texts(rows or 1200, rng)
    frame = pd.read_csv(path, usecols=["Description", "AdoptionSpeed", "split"])
    if rows is not None and rows < len(frame):
        frame = frame.iloc[np.sort(rng.choice(len(frame), rows, replace=False))].reset_index(drop=True)
    split = frame["split"].astype(str).str.strip().str.lower().to_numpy(dtype=object)
    train = np.flatnonzero(split == "train")
    split[rng.choice(train, round(VAL_SHARE * len(train)), replace=False)] = "val"
    labels = frame["AdoptionSpeed"].astype(int).to_numpy()
    classes = tuple(str(c) for c in sorted(np.unique(labels)))
    index = {int(c): i for i, c in enumerate(classes)}
    texts = [t if isinstance(t, str) else None for t in frame["Description"].tolist()]
    return Texts("petfinder Description -> AdoptionSpeed", texts, np.array([index[v] for v in labels]),
                 split.astype(str), classes)  # fmt: skip


def synthetic_texts(rows: int, rng: np.random.Generator) -> Texts:
    """Three classes, each with its own words, in sentences of uneven length."""
    words = (("awful", "dreadful", "grim"), ("fine", "okay", "plain"), ("superb", "lovely", "wonderful"))
    filler = "the a dog cat sat near door today with friends after lunch quietly home garden".split()
    label = rng.integers(0, 3, rows)
    texts: list[str | None] = []
    for row in range(rows):
        sentence = [*rng.choice(filler, int(rng.integers(4, 60))), rng.choice(words[label[row]])]
        rng.shuffle(sentence)
        texts.append(" ".join(sentence))
    split = rng.choice(np.array(["train", "val", "test"]), rows, p=[0.6, 0.2, 0.2])
    return Texts("synthetic", texts, label, split, ("0", "1", "2"))


def feature_set(data: Texts, embeddings: np.ndarray) -> FeatureSet:
    present = np.array([_real(t) for t in data.texts])
    return FeatureSet(
        ids=np.array([f"r{i}" for i in range(len(data.texts))]),
        split=data.split,
        target=data.label.astype(np.int64),
        inputs={f"text.{COLUMN}": embeddings.astype(np.float32)},
        present={f"text.{COLUMN}": present},
        classes=data.classes,
    )


# --- measurements -------------------------------------------------------------------------------


DataT = TypeVar("DataT")
EncoderT = TypeVar("EncoderT")
SectionT = TypeVar("SectionT", TextEncoderConfig, ImageEncoderConfig)


@dataclass(frozen=True)
class Setup(Generic[DataT, EncoderT, SectionT]):
    """Everything one modality's measurements share: the data, the encoder, the configs, the cache."""

    name: str  # the modality: "text" or "image"
    data: DataT
    encoder: EncoderT
    section: SectionT  # its `encoders.<name>` section, with the fine-tuning options
    fusion: FusionConfig
    train: TrainConfig
    cache_dir: Path
    device: torch.device

    def with_finetune(self, **changes: Any) -> SectionT:
        return self.section.model_copy(update={"finetune": self.section.finetune.model_copy(update=changes)})

    def tuning(self, section: SectionT | None = None) -> FineTuning:
        return fine_tuning(modality(self.name), section or self.section, self.encoder)


TextSetup = Setup[Texts, HuggingFaceTextEncoder, TextEncoderConfig]


def by_digest(texts: list[str]) -> dict[str, str]:
    """The texts by the key the lower-output cache names their entries with."""
    return {text_digest(text).hex(): text for text in texts}


def length_order(texts: list[str]) -> list[str]:
    """The extractor's encoding order (tasks.modalities.text.TextModality.encoding_order)."""
    return sorted(texts, key=lambda t: (len(t), t))


def frozen_pass(setup: TextSetup) -> float:
    """Seconds for one extraction pass over the train texts: sort, tokenise, full forward, copy back."""
    text = setup.section
    started = time.perf_counter()
    texts = length_order(setup.data.of("train"))
    encode_sorted_texts(setup.encoder, texts, text.max_length, text.batch_size, setup.device)
    return time.perf_counter() - started


def frozen_embeddings(setup: TextSetup) -> np.ndarray:
    """(N, H) frozen embeddings of every row (zeros where the text is absent)."""
    data, text = setup.data, setup.section
    real = length_order(sorted({t for t in data.texts if _real(t)}))  # type: ignore[type-var]
    vectors, _ = encode_sorted_texts(setup.encoder, real, text.max_length, text.batch_size, setup.device)
    row_of = {t: i for i, t in enumerate(real)}
    out = np.zeros((len(data.texts), setup.encoder.dim), dtype=np.float32)
    for row, t in enumerate(data.texts):
        if _real(t):
            out[row] = vectors[row_of[t]]
    return out


def fill_lower_cache(setup: TextSetup) -> dict[str, Any]:
    """The one-off lower pass: train texts (comparable with a frozen pass), then the rest."""
    encoder, text, data = setup.encoder, setup.section, setup.data
    lower = TextTop.lower_part(encoder, TextTop.count(encoder) - text.finetune.layers)

    def cache() -> LowerOutputCache:
        return LowerOutputCache(setup.cache_dir, setup.tuning(), lower, setup.device, progress=False)

    cold = cache()
    started = time.perf_counter()
    cold.outputs(by_digest(data.of("train")))
    train_seconds = time.perf_counter() - started
    everything = by_digest([t for t in data.texts if _real(t)])  # type: ignore[arg-type]
    cold.outputs(everything)
    all_seconds = time.perf_counter() - started
    started = time.perf_counter()
    cache().outputs(everything)
    return {
        "lower_layers": lower.depth,
        "texts": cold.computed,
        "train_texts_seconds": round(train_seconds, 3),
        "all_texts_seconds": round(all_seconds, 3),
        "warm_read_seconds": round(time.perf_counter() - started, 3),
        "bytes": sum(p.stat().st_size for p in cold.root.rglob("*.npy")),
    }


def fine_tune(setup: TextSetup, features: FeatureSet, data: Texts, text: TextEncoderConfig) -> FineTuned:
    return train_finetuned(
        setup.tuning(text), features, data.rows(), [COLUMN], "multiclass", setup.fusion, setup.train,
        setup.cache_dir, progress=False,
    )  # fmt: skip


def paired_rounds(setup: TextSetup, features: FeatureSet, rounds: int) -> dict[str, Any]:
    """Frozen pass, then one fine-tuning epoch, `rounds` times: both sides see the same noise."""
    one_epoch = setup.with_finetune(epochs=1)
    return paired_timings(
        lambda: frozen_pass(setup),
        lambda: fine_tune(setup, features, setup.data, one_epoch).epoch_seconds[0],
        rounds,
    )


def paired_timings(
    frozen_pass: Callable[[], float], epoch: Callable[[], dict[str, float]], rounds: int
) -> dict[str, Any]:
    """(a) then (b), `rounds` times; each side's best counts (noise only ever slows a pass down)."""
    frozen, train, val = [], [], []
    for _ in range(rounds):
        frozen.append(frozen_pass())
        seconds = epoch()
        train.append(seconds["train"])
        val.append(seconds["val"])
    best_frozen, best = min(frozen), int(np.argmin(train))
    return {
        "frozen_passes": [round(v, 3) for v in frozen],
        "epoch_train_seconds": [round(v, 3) for v in train],
        "epoch_val_seconds": [round(v, 3) for v in val],
        "frozen_seconds": round(best_frozen, 3),
        "epoch_seconds": round(train[best], 3),
        "ratio": round(train[best] / best_frozen, 3),
        "ratio_with_val": round((train[best] + val[best]) / best_frozen, 3),
        "paired_ratios": [round(t / f, 3) for t, f in zip(train, frozen, strict=True)],
    }


def all_layers_round(setup: TextSetup, features: FeatureSet, frozen_seconds: float) -> dict[str, Any]:
    """One epoch of fine-tuning every layer (timing only: train and val rows), after a frozen pass."""
    frozen = frozen_pass(setup)
    every = setup.with_finetune(layers=TextTop.count(setup.encoder), epochs=1)
    rest = setup.data.without("test")
    result = fine_tune(setup, features.rows(setup.data.split != "test"), rest, every)
    epoch = result.epoch_seconds[0]
    return {
        "layers": result.depth,
        "frozen_pass": round(frozen, 3),
        "epoch_seconds": round(epoch["train"], 3),
        "epoch_val_seconds": round(epoch["val"], 3),
        "ratio": round(epoch["train"] / min(frozen, frozen_seconds), 3),
        "paired_ratio": round(epoch["train"] / frozen, 3),
        "lower_cache_seconds": round(result.lower_seconds, 3),  # the embeddings alone: 0 lower layers
    }


def quality(setup: TextSetup, features: FeatureSet) -> tuple[dict[str, Any], FineTuned]:
    """The same head on frozen embeddings vs fine-tuned with the top layers, text column only."""
    data = setup.data
    frozen = train_model(features, "multiclass", setup.fusion, setup.train, progress=False)
    frozen_scores = scores(predict(frozen.model, features, "multiclass", None), data)
    tuned = fine_tune(setup, features, data, setup.section)
    tuned.head.to(setup.device)  # predict where training ran
    probabilities = predict_finetuned(
        setup.tuning(), tuned.head, tuned.top, features, data.rows(), [COLUMN], "multiclass", None,
        setup.cache_dir,
    )  # fmt: skip
    report = {
        "head": setup.fusion.head,
        "frozen": {**frozen_scores, "best_epoch": frozen.best_epoch, "epochs_run": len(frozen.history)},
        "finetuned": {
            **scores(probabilities, data),
            "best_epoch": tuned.best_epoch,
            "epochs_run": len(tuned.history),
            "epoch_train_seconds": [round(e["train"], 3) for e in tuned.epoch_seconds],
            "train_seconds": round(tuned.train_seconds, 3),
        },
    }
    return report, tuned


def scores(probabilities: np.ndarray, data: Texts) -> dict[str, dict[str, float]]:
    predicted = probabilities.argmax(axis=1)
    out = {}
    for name in ("val", "test"):
        rows = data.split == name
        out[name] = {
            "accuracy": round(float(accuracy_score(data.label[rows], predicted[rows])), 4),
            "macro_f1": round(float(f1_score(data.label[rows], predicted[rows], average="macro")), 4),
        }
    return out


# --- images -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Images:
    source: str
    root: Path
    rows: pd.DataFrame  # aligned-like: row_id, photo, sha256__photo, present__photo
    label: np.ndarray  # (N,) int64 class
    split: np.ndarray  # (N,) train | val | test
    classes: tuple[str, ...]

    def files(self, name: str | None = None) -> tuple[list[Path], list[bytes]]:
        """A split's (default: every) image files and their SHA-256 digests, as extraction reads them."""
        chosen = self.rows if name is None else self.rows[self.split == name]
        paths = [self.root / path for path in chosen[IMAGE_COLUMN]]
        return paths, [bytes.fromhex(digest) for digest in chosen[DIGEST + IMAGE_COLUMN]]


def load_images(path: Path, count: int, seed: int) -> Images | None:
    """`count` flipkart photos, an even share per category, split 60/20/20 per category; None when absent."""
    if not path.is_file():
        return None
    frame = pd.read_csv(path, usecols=["uniq_id", "image_path", "has_image", "category_l1"])
    frame = frame[(frame["has_image"] == 1) & frame["image_path"].notna()]
    rng = np.random.default_rng(seed)
    classes = tuple(sorted(frame["category_l1"].unique()))
    per_class = max(5, count // len(classes))
    picked, split = [], []
    for name in classes:
        rows = frame[frame["category_l1"] == name]
        rows = rows.iloc[rng.permutation(len(rows))[:per_class]]
        cut = np.array([0.6, 0.8]) * len(rows)
        picked.append(rows)
        split += ["train" if i < cut[0] else "val" if i < cut[1] else "test" for i in range(len(rows))]
    chosen = pd.concat(picked, ignore_index=True)
    root = path.parent
    digests = [hashlib.sha256((root / p).read_bytes()).hexdigest() for p in chosen["image_path"]]
    rows = pd.DataFrame(
        {
            ID: chosen["uniq_id"].astype(str),
            IMAGE_COLUMN: chosen["image_path"].astype(str),
            DIGEST + IMAGE_COLUMN: digests,
            PRESENT + IMAGE_COLUMN: True,
        }
    )
    label = np.array(chosen["category_l1"].map({c: i for i, c in enumerate(classes)}), dtype=np.int64)
    return Images("flipkart photo -> category_l1", root, rows, label, np.array(split), classes)


def encode_frozen(
    encoder: ImageEncoder, paths: list[Path], digests: list[bytes], batch: int, device: torch.device
) -> np.ndarray:
    """(N, D) frozen embeddings by extraction's own path: decoded ahead, normalised, one forward."""
    size = encoder.preprocessing.image_size
    batches = decoded_batches(paths, digests, size, batch, device)
    try:
        vectors, _, _ = encode_image_batches(encoder, batches, len(paths), device)
    finally:
        close_batches(batches)
    return vectors


def image_feature_set(data: Images, embeddings: np.ndarray) -> FeatureSet:
    block = f"image.{IMAGE_COLUMN}"
    return FeatureSet(
        ids=data.rows[ID].to_numpy(),
        split=data.split,
        target=data.label,
        inputs={block: embeddings.astype(np.float32)},
        present={block: np.ones(len(data.label), dtype=bool)},
        classes=data.classes,
    )


ImageSetup = Setup[Images, ImageEncoder, ImageEncoderConfig]


def image_frozen_pass(setup: ImageSetup) -> float:
    """Seconds for one extraction pass over the train images: read, verify, decode, forward, copy back."""
    started = time.perf_counter()
    encode_frozen(setup.encoder, *setup.data.files("train"), setup.section.batch_size, setup.device)
    return time.perf_counter() - started


def fine_tune_images(setup: ImageSetup, features: FeatureSet, image: ImageEncoderConfig) -> FineTuned:
    return train_finetuned(
        setup.tuning(image), features, setup.data.rows, [IMAGE_COLUMN], "multiclass", setup.fusion,
        setup.train, setup.cache_dir, setup.data.root, progress=False,
    )  # fmt: skip


def image_rounds(setup: ImageSetup, features: FeatureSet, blocks: int, rounds: int) -> dict[str, Any]:
    """Frozen pass, then one epoch fine-tuning the last `blocks`, `rounds` times (cache filled first)."""
    one_epoch = setup.with_finetune(blocks=blocks, epochs=1)
    filled = fine_tune_images(setup, features, one_epoch)  # the one-off lower pass, timed on its own
    timing = paired_timings(
        lambda: image_frozen_pass(setup),
        lambda: fine_tune_images(setup, features, one_epoch).epoch_seconds[0],
        rounds,
    )
    return {
        "blocks": blocks,
        "lower_cache_seconds": round(filled.lower_seconds, 3),
        "lower_cache_images": filled.computed,
        **timing,
    }


def image_quality(setup: ImageSetup, features: FeatureSet, blocks: tuple[int, ...]) -> dict[str, Any]:
    """The same head on frozen embeddings vs fine-tuned with the last blocks, image column only."""
    frozen = train_model(features, "multiclass", setup.fusion, setup.train, progress=False)
    report: dict[str, Any] = {
        "head": setup.fusion.head,
        "frozen": {
            **scores(predict(frozen.model, features, "multiclass", None), setup.data),
            "best_epoch": frozen.best_epoch,
            "epochs_run": len(frozen.history),
        },
    }
    for count in blocks:
        image = setup.with_finetune(blocks=count)
        tuned = fine_tune_images(setup, features, image)
        tuned.head.to(setup.device)  # predict where training ran
        probabilities = predict_finetuned(
            setup.tuning(image), tuned.head, tuned.top, features, setup.data.rows, [IMAGE_COLUMN],
            "multiclass", None, setup.cache_dir, setup.data.root,
        )  # fmt: skip
        report[f"finetuned_last_{count}"] = {
            **scores(probabilities, setup.data),
            "best_epoch": tuned.best_epoch,
            "epochs_run": len(tuned.history),
            "epoch_train_seconds": [round(e["train"], 3) for e in tuned.epoch_seconds],
        }
    return report


def run_images(args: argparse.Namespace) -> dict[str, Any]:
    """The image report, or a note saying why there is none (the dataset is not on this machine)."""
    data = load_images(args.image_data, args.images, args.seed)
    if data is None:
        return {"skipped": f"no image dataset at {args.image_data} (see ../shared/data/README.md)"}
    load_start = os.getloadavg()
    started = time.perf_counter()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    base = ImageEncoderConfig.model_validate(params["encoders"]["image"])
    image = base.model_copy(update={"image_size": args.image_size})
    if args.epochs:
        image = image.model_copy(
            update={"finetune": image.finetune.model_copy(update={"epochs": args.epochs})}
        )
    train = TrainConfig(seed=args.seed, device=args.device)
    device = pick_device(train.device)
    encoder = load_image_encoder(image.model, image.image_size).to(
        device=device, memory_format=torch.channels_last
    )
    with tempfile.TemporaryDirectory(prefix="bench-finetune-images-") as tmp:
        fusion = FusionConfig.model_validate(params["fusion"])
        setup = ImageSetup("image", data, encoder, image, fusion, train, Path(tmp), device)
        features = image_feature_set(data, encode_frozen(encoder, *data.files(), image.batch_size, device))
        timing = [image_rounds(setup, features, blocks, args.rounds) for blocks in IMAGE_BLOCKS]
        quality_ = image_quality(setup, features, IMAGE_BLOCKS)
    return {
        "data": {
            "source": data.source,
            "rows": len(data.label),
            **{name: int((data.split == name).sum()) for name in ("train", "val", "test")},
            "classes": len(data.classes),
            "image_size": image.image_size,
        },
        "machine": machine(device, load_start),
        "encoder": {"model": image.model, "blocks": ImageTop.count(encoder)},
        "frozen_pass": {
            "images": int((data.split == "train").sum()),
            "batch_size": image.batch_size,
            "path": "extraction's: decoded_batches + encode_image_batches",
        },
        "finetune": {
            "batch_size": image.finetune.batch_size,
            "lr": {"head": train.lr, "encoder": image.finetune.lr},
            "epochs": image.finetune.epochs,
            "per_blocks": timing,
        },
        "quality": quality_,
        "total_seconds": round(time.perf_counter() - started, 1),
    }


def summary_images(report: dict[str, Any]) -> str:
    if "skipped" in report:
        return f"images: skipped, {report['skipped']}"
    data, quality_ = report["data"], report["quality"]
    lines = [
        f"{data['source']}: {data['rows']} images at {data['image_size']} px, "
        f"{data['train']}/{data['val']}/{data['test']} train/val/test",
    ]
    for timing in report["finetune"]["per_blocks"]:
        lines.append(
            f"last {timing['blocks']} block(s): (a) frozen pass {timing['frozen_seconds']:.2f} s, "
            f"(b) epoch {timing['epoch_seconds']:.2f} s, ratio {timing['ratio']:.3f} "
            f"(with val {timing['ratio_with_val']:.3f}); "
            f"lower cache one-off {timing['lower_cache_seconds']:.2f} s"
        )
    lines += [quality_line(name, quality_[name]) for name in quality_ if name != "head"]
    return "\n".join(lines)


# --- the run ------------------------------------------------------------------------------------


def setup_from(args: argparse.Namespace, cache_dir: Path) -> TextSetup:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    base = TextEncoderConfig.model_validate(params["encoders"]["text"])
    finetune = base.finetune.model_copy(
        update={"layers": args.layers, "epochs": args.epochs or base.finetune.epochs}
    )
    train = TrainConfig(seed=args.seed, device=args.device)
    device = pick_device(train.device)
    encoder = load_text_encoder(args.model or base.model)
    if not isinstance(encoder, HuggingFaceTextEncoder):
        raise SystemExit(
            f"text encoder {encoder.model_id!r} is not a Hugging Face transformer: nothing to fine-tune"
        )
    return TextSetup(
        name="text",
        data=load_texts(args.data, args.rows, args.seed),
        encoder=encoder.to(device),
        section=base.model_copy(update={"finetune": finetune}),
        fusion=FusionConfig.model_validate(params["fusion"]),
        train=train,
        cache_dir=cache_dir,
        device=device,
    )


def run_text(args: argparse.Namespace) -> dict[str, Any]:
    load_start = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        setup = setup_from(args, Path(tmp))
        lower = fill_lower_cache(setup)
        features = feature_set(setup.data, frozen_embeddings(setup))
        timing = paired_rounds(setup, features, args.rounds)
        every = all_layers_round(setup, features, timing["frozen_seconds"])
        scores_, _ = quality(setup, features)
    data, text = setup.data, setup.section
    train_texts = data.of("train")
    report = {
        "data": {
            "source": data.source,
            "rows": len(data.texts),
            "train": int((data.split == "train").sum()),
            "val": int((data.split == "val").sum()),
            "test": int((data.split == "test").sum()),
            "absent_texts": sum(not _real(t) for t in data.texts),
            "classes": len(data.classes),
            "max_length": text.max_length,
            "mean_train_chars": round(float(np.mean([len(t) for t in train_texts])), 1),
        },
        "machine": machine(setup.device, load_start),
        "encoder": {"model": text.model, "layers": TextTop.count(setup.encoder)},
        "frozen_pass": {
            "texts": len(train_texts),
            "batch_size": text.batch_size,
            "order": "sorted by length, as extraction encodes (encoding_order + encode_sorted_texts)",
            "seconds": timing["frozen_seconds"],
        },
        "lower_cache": lower,
        "finetune": {
            "layers": text.finetune.layers,
            "batch_size": text.finetune.batch_size,
            "lr": {"head": setup.train.lr, "encoder": text.finetune.lr},
            "batches": f"length-bucketed ({BUCKET_BATCHES} batches a bucket), shuffled",
            **timing,
        },
        "finetune_all_layers": every,
        "quality": scores_,
        "targets": TARGETS,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    report["meets_targets"] = report["finetune"]["ratio"] <= TARGETS["ratio"]
    return report


def summary_text(report: dict[str, Any]) -> str:
    data, frozen, lower = report["data"], report["frozen_pass"], report["lower_cache"]
    tuned, every, quality = report["finetune"], report["finetune_all_layers"], report["quality"]
    lines = [
        f"{data['source']}: {data['rows']} rows, {data['train']}/{data['val']}/{data['test']} train/val/test",
        f"(a) frozen pass over {frozen['texts']} train texts: {frozen['seconds']:.2f} s",
        f"lower cache ({lower['lower_layers']} layers, one-off): {lower['train_texts_seconds']:.2f} s train "
        f"texts, {lower['all_texts_seconds']:.2f} s all {lower['texts']} texts",
        f"(b) epoch, top {tuned['layers']}: {tuned['epoch_seconds']:.2f} s, ratio {tuned['ratio']:.2f} "
        f"(with val {tuned['ratio_with_val']:.2f}; target <= {report['targets']['ratio']})",
        f"    epoch, all {every['layers']}: {every['epoch_seconds']:.2f} s, ratio {every['ratio']:.2f}",
    ]
    lines += [quality_line(name, quality[name]) for name in ("frozen", "finetuned")]
    return "\n".join(lines)


def machine(device: torch.device, load_start: tuple[float, float, float]) -> dict[str, Any]:
    """Where the figures were taken, and how shared the machine was meanwhile."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
    }


def quality_line(name: str, scores_: dict[str, Any]) -> str:
    val, test = scores_["val"], scores_["test"]
    return (
        f"{name:>17}: val acc {val['accuracy']:.3f} F1 {val['macro_f1']:.3f} | "
        f"test acc {test['accuracy']:.3f} F1 {test['macro_f1']:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="subsample this many rows (0: all)")
    parser.add_argument("--layers", type=int, default=2, help="top layers to fine-tune")
    parser.add_argument(
        "--epochs", type=int, default=None, help="fine-tuning epochs for quality (default: params)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="paired frozen-pass / epoch timings; best counts"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="where it all runs")
    parser.add_argument("--data", type=Path, default=PETFINDER, help="petfinder CSV (else synthetic texts)")
    parser.add_argument("--model", default=None, help="text encoder (default: params.yaml's)")
    parser.add_argument("--modality", choices=("text", "image", "both"), default="both")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="flipkart photos, even per class")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--image-data", type=Path, default=FLIPKART, help="flipkart_products.csv")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # on a shared CPU, fewer threads than cores can be steadier
    args.rows = args.rows or None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report, lines = {}, []
    if args.modality in ("text", "both"):
        report["text"] = run_text(args)
        lines.append(summary_text(report["text"]))
    if args.modality in ("image", "both"):
        report["image"] = run_images(args)
        lines.append(summary_images(report["image"]))
    print(json.dumps(report, indent=2) if args.json else "\n\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
