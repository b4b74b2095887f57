"""Fine-tune the text encoder's top layers end to end with the fusion head, cheaply.

Only the top N transformer layers learn, so what the frozen lower layers compute is a pure
function of the text: it is computed once per distinct text and kept in a content-addressed
cache, and an epoch runs only the top layers (forward and backward) and the head. On a CPU an
epoch of fine-tuning two of MiniLM's six layers then costs about one frozen extraction pass.

The cache holds, per (encoder fingerprint, lower layer count, max_length) namespace, one
float16 (T, H) array of real-token hidden states per text, named by the text's SHA-256:

    <cache_dir>/hidden/<namespace>/<aa>/<sha256>.npy

Every entry is written to a temp file beside it and renamed into place, so a reader sees a
whole entry or none; an entry that fails its checks (a torn file after a power cut) is
recomputed. The cache is re-creatable, so entries are not fsynced one by one.

Training mirrors tasks.train.training: seeded, deterministic on CPU, bf16 autocast on CUDA,
early stopping on validation loss, the best epoch's weights (head and top) kept.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from modelzoo.encoders.huggingface import HuggingFaceTextEncoder
from modelzoo.encoders.loading import encoder_fingerprint, load_text_encoder
from modelzoo.encoders.text_finetune import (
    LowerText,
    TextTop,
    load_top_state,
    lower_text,
    split_text_encoder,
    state_layers,
)
from tasks.atomic import process_alive, write_json
from tasks.config import FusionConfig, TextEncoderConfig, TrainConfig
from tasks.device import autocast_for, pick_device
from tasks.errors import DataError, FuselineError
from tasks.train.dataset import FeatureSet
from tasks.train.objectives import Objective, balanced_weights, check_target, check_task, to_prediction
from tasks.train.training import (
    ModalityDropout,
    TargetScaling,
    _deterministic,
    _seed_everything,
    build_head,
    fit_target_scaling,
    head_features,
    output_dim,
)

__all__ = [
    "FineTunedText",
    "HiddenStateCache",
    "load_finetuned_top",
    "load_hf_text_encoder",
    "predict_finetuned",
    "text_block",
    "text_digest",
    "train_finetuned",
]

log = logging.getLogger(__name__)

CACHE_FORMAT = "float16-real-tokens/v1"  # bump when what an entry holds changes
# Dropout on attention probabilities while fine-tuning: off, because on a CPU it disables the
# fused attention kernel and costs ~50% of an epoch (modelzoo.encoders.text_finetune.
# set_attention_dropout); the layers' hidden-state dropout and the head's dropout remain.
ATTENTION_DROPOUT = 0.0
BUCKET_BATCHES = 16
# On a GPU each new (batch, length) shape costs a one-off kernel choice; with every length from
# 1 to max_length in play, epochs 2+ of petfinder took 4-9x epoch 1 on an H200. Lengths rounded
# up to a multiple of this leave a few dozen shapes. A CPU showed no such cost: it pads exactly.
CUDA_PAD_MULTIPLE = 16  # batches per length bucket: similar lengths share a batch, order stays random
_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)\.[^.]+\.tmp$")


@dataclass
class FineTunedText:
    """A fusion head and the text top it was trained with; both on CPU, eval mode, best epoch."""

    head: nn.Module
    top: TextTop
    in_dims: dict[str, int]
    out_dim: int
    target_scaling: TargetScaling | None  # regression only
    history: list[dict[str, float]] = field(default_factory=list)  # {epoch, train_loss, val_loss}
    best_epoch: int = 0
    train_seconds: float = 0.0  # the epochs only; the one-off lower pass is lower_seconds
    columns: tuple[str, ...] = ()  # text columns whose blocks the top computes
    layers: int = 0  # top layers fine-tuned
    lower_seconds: float = 0.0  # reading and computing the cached lower hidden states
    texts_computed: int = 0  # distinct texts run through the lower layers by this call
    texts_read: int = 0  # distinct texts whose hidden states came from the cache
    epoch_seconds: list[dict[str, float]] = field(default_factory=list)  # {train, val} per epoch


def text_block(column: str) -> str:
    """The feature block a text column's embedding fills."""
    return f"text.{column}"


# --- the hidden-state cache -----------------------------------------------------------------------


class HiddenStateCache:
    """Lower-layer hidden states by text, read from disk or computed (and stored) once.

    `computed` and `read` count distinct texts, so callers (and tests) can tell a warm run
    from a cold one.
    """

    def __init__(
        self,
        cache_dir: Path,
        encoder: HuggingFaceTextEncoder,
        lower: LowerText,
        max_length: int,
        batch_size: int,
        device: torch.device | None = None,
        progress: bool = True,
    ) -> None:
        self.encoder = encoder
        self.lower = lower
        self.max_length = max_length
        self.tokens = min(max_length, encoder.max_positions)  # longest entry the tokenizer makes
        self.batch_size = batch_size
        self.device = device or torch.device("cpu")
        self.progress = progress
        self.namespace = self._namespace()
        self.root = Path(cache_dir) / "hidden" / self.namespace
        self.computed = 0
        self.read = 0
        self._swept = False

    def _namespace(self) -> str:
        """Everything that decides an entry: the encoder (by weights), the split point, max_length."""
        description = self.describe()
        canonical = json.dumps(description, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def describe(self) -> dict[str, object]:
        return {
            "format": CACHE_FORMAT,
            "encoder": encoder_fingerprint(self.encoder, max_length=self.max_length),
            "lower_layers": self.lower.layers,
            "max_length": self.max_length,
        }

    def path_of(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.npy"

    def states(self, texts: Iterable[str]) -> dict[str, Tensor]:
        """digest -> (T, H) float16 CPU hidden states of each distinct text (T real tokens)."""
        wanted = {text_digest(text): text for text in texts}
        found: dict[str, Tensor] = {}
        for digest in wanted:
            state = self._read(digest)
            if state is not None:
                found[digest] = state
        self.read += len(found)
        missing = [(digest, text) for digest, text in wanted.items() if digest not in found]
        if missing:
            found.update(self._compute(missing))
        return found

    def _read(self, digest: str) -> Tensor | None:
        """The entry, or None when absent or not a whole, plausible entry (then it is recomputed)."""
        path = self.path_of(digest)
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as err:
            log.warning("hidden-state cache: unreadable entry %s (%s); recomputing it", path, err)
            return None
        if (
            array.dtype != np.float16
            or array.ndim != 2
            or array.shape[1] != self.lower.dim
            or not 1 <= array.shape[0] <= self.tokens
            or not np.isfinite(array).all()
        ):
            log.warning("hidden-state cache: malformed entry %s %s; recomputing it", path, array.shape)
            return None
        return torch.from_numpy(array)

    def _compute(self, missing: list[tuple[str, str]]) -> dict[str, Tensor]:
        """Run the lower layers over `missing`, shortest first so each batch pads little."""
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its pool would fight torch's threads
        self._prepare_root()
        ordered = sorted(missing, key=lambda item: (len(item[1]), item[1]))
        out: dict[str, Tensor] = {}
        home = next(self.lower.parameters()).device
        self.lower.to(self.device)
        try:
            bar = tqdm(total=len(ordered), desc="hidden states", unit="text", disable=not self.progress)
            with bar:
                for start in range(0, len(ordered), self.batch_size):
                    batch = ordered[start : start + self.batch_size]
                    for digest, state in zip((d for d, _ in batch), self._lower_batch(batch), strict=True):
                        self._write(digest, state)
                        out[digest] = state
                    bar.update(len(batch))
        finally:
            self.lower.to(home)  # its weights are the base encoder's: put them back where they were
        self.computed += len(out)
        return out

    def _lower_batch(self, batch: list[tuple[str, str]]) -> list[Tensor]:
        tokens = self.encoder.tokenize([text for _, text in batch], self.max_length)
        ids = tokens["input_ids"].to(self.device)  # (B, T)
        mask = tokens["attention_mask"].to(self.device)  # (B, T)
        hidden = self.lower(ids, mask).float().cpu()  # (B, T, H), float32 on every device
        lengths = tokens["attention_mask"].sum(dim=1).tolist()
        return [hidden[i, :length].half().contiguous() for i, length in enumerate(lengths)]  # (T_i, H)

    def _prepare_root(self) -> None:
        """Describe the namespace for humans, and drop temps that killed writers left (once)."""
        if self._swept:
            return
        self._swept = True
        if not (self.root / "key.json").is_file():
            write_json(self.describe(), self.root / "key.json")
        for temp in self.root.glob("*/.*.tmp"):
            match = _TEMP.match(temp.name)
            if match and not process_alive(int(match["pid"])):
                temp.unlink(missing_ok=True)

    def _write(self, digest: str, state: Tensor) -> None:
        """Temp beside the entry, then rename: a reader never sees half an entry."""
        path = self.path_of(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with open(temp, "wb") as handle:
                np.save(handle, state.numpy(), allow_pickle=False)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)


def text_digest(text: str) -> str:
    """SHA-256 of the text exactly as the tokenizer gets it (as the feature cache keys texts)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- texts per row --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TextRows:
    """Each text column's rows pointing at distinct texts' cached hidden states."""

    states: list[Tensor]  # slot -> (T_s, H) float16 CPU
    lengths: np.ndarray  # (S,) tokens per slot
    slots: dict[str, np.ndarray]  # column -> (N,) slot per row, -1 where the text is absent

    def row_lengths(self) -> np.ndarray:
        """(N,) the longest text a row holds, in tokens (0: none): what a batch pads to."""
        longest = np.zeros(len(next(iter(self.slots.values()))), dtype=np.int64)
        for slots in self.slots.values():
            longest = np.maximum(longest, np.where(slots >= 0, self.lengths[np.maximum(slots, 0)], 0))
        return longest


def _is_text(value: object) -> bool:
    """A blank or missing cell is absent, as align decides presence."""
    return isinstance(value, str) and value.strip() != ""


def _text_rows(texts: dict[str, list[str | None]], cache: HiddenStateCache) -> _TextRows:
    distinct = {text for column in texts.values() for text in column if _is_text(text)}
    by_digest = cache.states(sorted(distinct))
    slot_of: dict[str, int] = {}
    states: list[Tensor] = []
    slots: dict[str, np.ndarray] = {}
    for column, values in texts.items():
        column_slots = np.full(len(values), -1, dtype=np.int64)
        for row, text in enumerate(values):
            if not _is_text(text):
                continue
            digest = text_digest(text)  # type: ignore[arg-type]
            slot = slot_of.get(digest)
            if slot is None:
                slot = slot_of[digest] = len(states)
                states.append(by_digest[digest])
            column_slots[row] = slot
        slots[column] = column_slots
    lengths = np.array([state.shape[0] for state in states], dtype=np.int64)
    return _TextRows(states, lengths, slots)


def _check_texts(features: FeatureSet, texts: dict[str, list[str | None]]) -> tuple[str, ...]:
    """The text columns, each with a block in `features` and one cell per row."""
    if not texts:
        raise ValueError("fine-tuning the text encoder needs at least one text column")
    for column, values in texts.items():
        if text_block(column) not in features.inputs:
            raise ValueError(f"text column {column!r}: no block {text_block(column)!r} among the features")
        if len(values) != len(features.ids):
            raise ValueError(f"text column {column!r}: {len(values)} texts for {len(features.ids)} rows")
    return tuple(sorted(texts))


# --- device tensors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    """Every row's non-text blocks, presence and target on the device, and the texts on CPU."""

    dense: dict[str, Tensor]  # non-text block -> (N, D)
    present: dict[str, Tensor]  # every block -> (N,) bool; text blocks also need a text
    target: Tensor | None  # (N,) or (N, C), in the loss's form; None when predicting
    text: _TextRows
    text_dim: int

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(sorted(self.text.slots))


def _rows(
    features: FeatureSet,
    text: _TextRows,
    text_dim: int,
    task: str | None,
    scaling: TargetScaling | None,
    device: torch.device,
) -> _Rows:
    blocks = {text_block(column) for column in text.slots}
    dense = {
        name: torch.as_tensor(np.asarray(block, dtype=np.float32), device=device)
        for name, block in features.inputs.items()
        if name not in blocks
    }
    present = {}
    for name, mask in features.present.items():
        keep = np.asarray(mask, dtype=bool)
        if name in blocks:
            keep = keep & (text.slots[name.split(".", 1)[1]] >= 0)
        present[name] = torch.as_tensor(keep, device=device)
    target = None if task is None else _target(features.target, task, scaling, device)
    return _Rows(dense, present, target, text, text_dim)


def _target(target: np.ndarray, task: str, scaling: TargetScaling | None, device: torch.device) -> Tensor:
    if task == "multiclass":
        return torch.as_tensor(target, dtype=torch.int64, device=device)  # (N,)
    values = torch.as_tensor(target, dtype=torch.float32, device=device)  # (N,) or (N, C)
    return scaling.apply(values) if scaling is not None else values


def _pad(states: list[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Pad to the batch's longest text: ((b, T, H) float32, (b, T) int64 mask of real tokens)."""
    lengths = torch.tensor([state.shape[0] for state in states])  # (b,)
    hidden = pad_sequence(states, batch_first=True)  # (b, T, H) float16
    if device.type == "cuda":
        extra = -hidden.shape[1] % CUDA_PAD_MULTIPLE
        hidden = nn.functional.pad(hidden, (0, 0, 0, extra))  # (b, T', H), T' a multiple
    mask = (torch.arange(hidden.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).long()  # (b, T)
    return hidden.to(device=device, dtype=torch.float32), mask.to(device)


def _forward(
    head: nn.Module, top: TextTop, rows: _Rows, index: np.ndarray, present: dict[str, Tensor]
) -> Tensor:
    """Logits (b, out_dim) of rows `index`, the text blocks computed by `top` from cached states."""
    device = next(head.parameters()).device
    picked = torch.as_tensor(index, device=device)  # (b,)
    inputs = {name: block.index_select(0, picked) for name, block in rows.dense.items()}  # (b, D)
    batch_present = {name: mask.index_select(0, picked) for name, mask in present.items()}  # (b,)
    with autocast_for(device):
        for column in rows.columns:
            block = text_block(column)
            inputs[block] = _embed(top, rows, column, index, batch_present[block], device)
        return head(inputs, batch_present)


def _embed(
    top: TextTop, rows: _Rows, column: str, index: np.ndarray, present: Tensor, device: torch.device
) -> Tensor:
    """(b, H) text embeddings of one column; rows hidden this batch stay zero and skip the top."""
    embedded = torch.zeros(len(index), rows.text_dim, device=device)  # (b, H)
    chosen = np.flatnonzero(present.cpu().numpy())
    if chosen.size == 0:
        return embedded
    slots = rows.text.slots[column][index[chosen]]
    hidden, mask = _pad([rows.text.states[slot] for slot in slots], device)  # (p, T, H), (p, T)
    embedded[torch.as_tensor(chosen, device=device)] = top(hidden, mask).float()  # (p, H)
    return embedded


# --- training -------------------------------------------------------------------------------------


def train_finetuned(
    features: FeatureSet,
    texts: dict[str, list[str | None]],
    task: str,
    fusion: FusionConfig,
    train: TrainConfig,
    text: TextEncoderConfig,
    cache_dir: Path,
    progress: bool = True,
    base_encoder: HuggingFaceTextEncoder | None = None,
    deadline: float | None = None,
) -> FineTunedText:
    """Fit `fusion.head` and the text encoder's top `text.finetune.layers` layers together.

    `texts[column]` holds the raw text of every row (all splits, aligned with
    `features.ids`); its embedding replaces block `text.<column>`. One top serves every text
    column, as one frozen encoder did. `base_encoder` saves loading `text.model` again.
    `deadline` (time.time()) ends training after the epoch that passes it, keeping the best
    epoch so far, as train_model does for `train.time_limit`.
    """
    check_task(task)
    layers = text.finetune.layers
    if layers < 1:
        raise ValueError("encoders.text.finetune.layers is 0 (a frozen encoder): train with train_model")
    features = head_features(features, fusion.head)
    columns = _check_texts(features, texts)
    train_rows, val_rows = _split_indices(features)
    encoder = base_encoder if base_encoder is not None else load_hf_text_encoder(text.model)
    lower, top = split_text_encoder(encoder, layers, attention_dropout=ATTENTION_DROPOUT)
    device = pick_device(train.device)

    started = time.perf_counter()
    cache = HiddenStateCache(cache_dir, encoder, lower, text.max_length, text.batch_size, device, progress)
    text_rows = _text_rows({column: texts[column] for column in columns}, cache)
    lower_seconds = time.perf_counter() - started

    with _deterministic(device):
        _seed_everything(train.seed)
        in_dims = {name: int(block.shape[1]) for name, block in sorted(features.inputs.items())}
        in_dims.update({text_block(column): top.dim for column in columns})
        out_dim = output_dim(task, features)
        check_target(task, features.target, out_dim)
        train_target = features.target[train_rows]
        scaling = fit_target_scaling(train_target) if task == "regression" else None
        weight = balanced_weights(task, train_target, out_dim) if train.class_weight else None
        objective = Objective(task, weight).to(device)
        head = build_head(fusion, in_dims, out_dim).to(device)
        top.to(device)
        rows = _rows(features, text_rows, top.dim, task, scaling, device)
        began = time.perf_counter()
        fit = _fit(head, top, objective, rows, train_rows, val_rows, train, text, progress, deadline)
        seconds = time.perf_counter() - began
    head.cpu().eval()
    top.cpu().eval()
    return FineTunedText(
        head=head,
        top=top,
        in_dims=in_dims,
        out_dim=out_dim,
        target_scaling=scaling,
        history=fit.history,
        best_epoch=fit.best_epoch,
        train_seconds=seconds,
        columns=columns,
        layers=layers,
        lower_seconds=lower_seconds,
        texts_computed=cache.computed,
        texts_read=cache.read,
        epoch_seconds=fit.epoch_seconds,
    )


def _split_indices(features: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
    train_rows = np.flatnonzero(features.split == "train")
    val_rows = np.flatnonzero(features.split == "val")
    if len(train_rows) == 0:
        raise DataError("no rows in the train split; check data.split")
    if len(val_rows) == 0:
        raise DataError("no rows in the val split; early stopping needs validation rows")
    return train_rows, val_rows


@dataclass
class _Fit:
    history: list[dict[str, float]]
    best_epoch: int
    epoch_seconds: list[dict[str, float]]


def _fit(
    head: nn.Module,
    top: TextTop,
    objective: Objective,
    rows: _Rows,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    train: TrainConfig,
    text: TextEncoderConfig,
    progress: bool,
    deadline: float | None,
) -> _Fit:
    """Epochs with early stopping; leaves the best validation epoch's weights in head and top."""
    finetune = text.finetune
    batches_per_epoch = math.ceil(len(train_rows) / finetune.batch_size)
    # Discriminative learning rates: a fresh head learns fast, pretrained layers must not be
    # pushed far from what made them useful.
    optimizer = torch.optim.AdamW(
        [
            {"params": list(head.parameters()), "lr": train.lr},
            {"params": list(top.parameters()), "lr": finetune.lr},
        ],
        weight_decay=train.weight_decay,
    )
    total = max(1, finetune.epochs * batches_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_then_linear_decay(total, round(finetune.warmup * total))
    )
    shuffler = torch.Generator().manual_seed(train.seed)  # batch order depends on the seed alone
    train_present = {name: mask.index_select(0, _on(train_rows, mask)) for name, mask in rows.present.items()}
    hider = ModalityDropout(train_present, train.modality_dropout, train.seed)
    lengths = rows.text.row_lengths()
    val_order = val_rows[np.argsort(lengths[val_rows], kind="stable")]  # little padding, fixed order
    history: list[dict[str, float]] = []
    seconds: list[dict[str, float]] = []
    best = (math.inf, 0, _snapshot(head, top))
    stale = 0
    with tqdm(range(1, finetune.epochs + 1), desc="fine-tune", unit="epoch", disable=not progress) as bar:
        for epoch in bar:
            began = time.perf_counter()
            batches = length_buckets(train_rows, lengths, finetune.batch_size, shuffler)
            present = (
                _scatter_present(rows.present, train_rows, hider.epoch_masks())
                if train.modality_dropout > 0
                else rows.present
            )
            train_loss = _train_epoch(
                head, top, objective, rows, batches, present, optimizer, scheduler, train
            )
            middle = time.perf_counter()
            val_loss = _evaluate_loss(head, top, objective, rows, val_order, text.batch_size)
            seconds.append({"train": middle - began, "val": time.perf_counter() - middle})
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
            bar.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}")
            if val_loss < best[0]:
                best, stale = (val_loss, epoch, _snapshot(head, top)), 0
            else:
                stale += 1
                if stale >= train.patience:
                    break
            if deadline is not None and time.time() >= deadline:
                break
    head.load_state_dict(best[2][0])
    top.load_state_dict(best[2][1])
    return _Fit(history, best[1], seconds)


def _on(index: np.ndarray, like: Tensor) -> Tensor:
    return torch.as_tensor(index, device=like.device)


def _snapshot(head: nn.Module, top: TextTop) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    return copy.deepcopy(head.state_dict()), copy.deepcopy(top.state_dict())


def _scatter_present(
    present: dict[str, Tensor], train_rows: np.ndarray, train_masks: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Every row's presence (N,), with this epoch's modality dropout applied to the train rows."""
    out = {}
    for name, mask in present.items():
        full = mask.clone()
        full[_on(train_rows, mask)] = train_masks[name]
        out[name] = full
    return out


def warmup_then_linear_decay(total: int, warmup: int) -> Callable[[int], float]:
    """LR factor per step: a linear rise over `warmup` steps, then a linear fall to zero at `total`.

    The usual schedule for fine-tuning a pretrained transformer: the warm-up keeps the first,
    noisy gradients of a fresh head from wrecking the pretrained layers.
    """

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # never 0: the first batch already learns something
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def length_buckets(
    rows: np.ndarray, lengths: np.ndarray, batch_size: int, generator: torch.Generator
) -> list[np.ndarray]:
    """Shuffled batches of `rows` in which texts have similar lengths.

    Rows are shuffled, cut into windows of BUCKET_BATCHES batches, sorted by length within
    each window and cut into batches, whose order is shuffled again: padding to the batch's
    longest text then wastes little, while every epoch still sees new batches in a new order.
    """
    shuffled = rows[torch.randperm(len(rows), generator=generator).numpy()]
    window = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(shuffled), window):
        chunk = shuffled[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def _train_epoch(
    head: nn.Module,
    top: TextTop,
    objective: Objective,
    rows: _Rows,
    batches: list[np.ndarray],
    present: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: TrainConfig,
) -> float:
    """One pass over the batches; returns the row-weighted mean loss."""
    head.train()
    top.train()
    assert rows.target is not None
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    total = torch.zeros((), device=rows.target.device)  # accumulate on device: no sync per batch
    count = 0
    for index in batches:
        logits = _forward(head, top, rows, index, present)  # (b, out_dim)
        loss = objective.loss(logits.float(), rows.target.index_select(0, _on(index, rows.target)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip is not None:
            nn.utils.clip_grad_norm_(parameters, train.grad_clip)
        optimizer.step()
        scheduler.step()
        total += loss.detach() * len(index)
        count += len(index)
    mean_loss = float(total) / max(1, count)
    if not math.isfinite(mean_loss):
        raise FuselineError(
            "fine-tuning diverged (loss is not finite); try a lower encoders.text.finetune.lr or "
            "train.lr, or set train.grad_clip"
        )
    return mean_loss


def _evaluate_loss(
    head: nn.Module, top: TextTop, objective: Objective, rows: _Rows, order: np.ndarray, batch_size: int
) -> float:
    """Row-weighted mean loss in float32: early stopping compares it across epochs."""
    head.eval()
    top.eval()
    assert rows.target is not None
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            logits = _forward(head, top, rows, index, rows.present).float()  # (b, out_dim)
            target = rows.target.index_select(0, _on(index, rows.target))
            total += float(objective.loss(logits, target)) * len(index)
    return total / max(1, len(order))


# --- prediction -----------------------------------------------------------------------------------


def predict_finetuned(
    head: nn.Module,
    top: TextTop,
    features: FeatureSet,
    texts: dict[str, list[str | None]],
    task: str,
    target_scaling: tuple[float, float] | None,
    text: TextEncoderConfig,
    cache_dir: Path,
    base_encoder: HuggingFaceTextEncoder | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Predictions in tasks.train.training.predict's form, text blocks recomputed by `top`.

    binary -> P(class 1) (N,); multiclass -> probabilities (N, C); multilabel -> label
    probabilities (N, C); regression -> values (N,) on the original scale. The lower hidden
    states come through the same cache as in training, so known texts cost nothing. Runs
    where `head` lives; `features` holds the blocks the head was trained on.
    """
    check_task(task)
    if task == "regression" and target_scaling is None:
        raise ValueError("regression predictions need the target_scaling from training")
    _check_texts(features, texts)
    encoder = base_encoder if base_encoder is not None else load_hf_text_encoder(text.model)
    device = next(head.parameters()).device
    top.to(device).eval()
    head.eval()
    lower = lower_text(encoder, top.lower_layers)
    cache = HiddenStateCache(cache_dir, encoder, lower, text.max_length, text.batch_size, device, progress)
    rows = _rows(features, _text_rows(texts, cache), top.dim, None, None, device)
    # Shortest texts first, so each batch pads little; the result is put back in row order.
    order = np.argsort(rows.text.row_lengths(), kind="stable")
    # An empty table still runs one (empty) batch, so the result keeps its (0, C) shape.
    batches = [order[start : start + text.batch_size] for start in range(0, len(order), text.batch_size)]
    outputs = []
    with torch.no_grad():
        for index in batches or [order]:
            logits = _forward(head, top, rows, index, rows.present)  # (b, out_dim)
            outputs.append(to_prediction(task, logits.float()).cpu())
    prediction = torch.cat(outputs).numpy()
    prediction = prediction[np.argsort(order, kind="stable")]
    if task == "regression" and target_scaling is not None:
        mean, std = target_scaling
        prediction = prediction * std + mean
    return prediction


# --- rebuilding -----------------------------------------------------------------------------------


def load_hf_text_encoder(name: str) -> HuggingFaceTextEncoder:
    """`text.model` loaded, refusing encoders whose layers cannot be reached (not a transformer)."""
    encoder = load_text_encoder(name)
    if not isinstance(encoder, HuggingFaceTextEncoder):
        raise ValueError(
            f"text encoder {name!r} is not a Hugging Face transformer; only those can be fine-tuned"
        )
    return encoder


def load_finetuned_top(
    text: TextEncoderConfig,
    layers: int,
    state: dict[str, Tensor],
    base_encoder: HuggingFaceTextEncoder | None = None,
) -> TextTop:
    """The fine-tuned top for prediction: built from `text.model` and loaded strictly, in eval mode.

    Raises:
        ValueError: `state` holds another number of layers or does not fit the encoder.
    """
    held = state_layers(state)
    if held != layers:
        raise ValueError(f"fine-tuned text state holds {held} layers, expected {layers}")
    encoder = base_encoder if base_encoder is not None else load_hf_text_encoder(text.model)
    top = TextTop(encoder, layers)
    return load_top_state(top, state).eval()
