"""Train a fusion head together with an encoder's top, fed from cached lower-part outputs.

Shared by every fine-tunable modality (tasks.train.finetuned_member). A modality hands over
its top as a `Part` (the module, and how a batch of cached lower outputs becomes its input)
and its rows as `LowerRows` (each column's rows pointing at distinct contents' cached
outputs); everything else is here once: the
device tensors, discriminative learning rates with a warm-up then linear decay, seeded
batches, modality dropout, early stopping with the best epoch kept (on val loss, or on a chosen
`evaluate.metric`: tasks/train/best_epoch.py), deterministic kernels on CPU, bf16 autocast on
CUDA, and prediction in tasks.train.training.predict's form.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tasks.config import FusionConfig, TrainConfig
from tasks.device import autocast_for, pick_device
from tasks.errors import FuselineError
from tasks.train.best_epoch import EpochChoice
from tasks.train.dataset import FeatureSet
from tasks.train.lower_cache import LowerOutputCache
from tasks.train.objectives import Objective, check_task, to_prediction
from tasks.train.schedules import warmup_then_linear_decay
from tasks.train.training import (
    ModalityDropout,
    TargetScaling,
    _deterministic,
    _seed_everything,
    build_head,
    fit_objective,
    head_features,
    no_time_for_another,
    split_indices,
)

__all__ = [
    "FineTuned",
    "FinetuneSchedule",
    "LowerRows",
    "Part",
    "check_columns",
    "fit_with_top",
    "length_buckets",
    "lower_rows",
    "predict_with_top",
    "split_indices",
]

BUCKET_BATCHES = 16  # batches per length bucket: similar lengths share a batch, order stays random


class FinetuneSchedule(Protocol):
    """What the loop reads of `encoders.<modality>.finetune`."""

    lr: float  # the encoder top's learning rate, beside the head's train.lr
    warmup: float  # share of steps warming up
    epochs: int
    batch_size: int
    # and, where the section has one, `patience`: epochs without progress on val before it
    # stops (an epoch is a pass); a plug-in's section without one gets the heads' train.patience


@dataclass(frozen=True)
class Part:
    """A trainable encoder top and how cached lower outputs reach it."""

    modality: str  # the blocks it computes are `<modality>.<column>`
    top: nn.Module
    dim: int  # the embedding width the top outputs
    collate: Callable[[list[Tensor], torch.device], tuple[Tensor, ...]]  # slots' outputs -> top inputs
    setting: str  # `encoders.<modality>.finetune`, named when training diverges

    def block(self, column: str) -> str:
        return f"{self.modality}.{column}"


@dataclass(frozen=True)
class LowerRows:
    """Each fine-tuned column's rows pointing at distinct contents' cached lower outputs."""

    states: list[Tensor]  # slot -> lower output, float16 CPU
    lengths: np.ndarray  # (S,) what a batch holding the slot pads to (text: tokens; images: 0)
    slots: dict[str, np.ndarray]  # column -> (N,) slot per row, -1 where the content is absent

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(sorted(self.slots))

    def row_lengths(self) -> np.ndarray:
        """(N,) the longest content a row holds (0: none): what a batch pads to."""
        longest = np.zeros(len(next(iter(self.slots.values()))), dtype=np.int64)
        for slots in self.slots.values():
            longest = np.maximum(longest, np.where(slots >= 0, self.lengths[np.maximum(slots, 0)], 0))
        return longest


def lower_rows(
    keys: dict[str, list[str | None]], outputs: dict[str, Tensor], length: Callable[[Tensor], int]
) -> LowerRows:
    """LowerRows from each column's per-row content digest (None: absent) and the cached outputs.

    A digest without an output (a file that could not be decoded) is an absent cell. Each
    distinct content gets one slot, however many rows and columns share it.
    """
    slot_of: dict[str, int] = {}
    states: list[Tensor] = []
    slots: dict[str, np.ndarray] = {}
    for column, digests in keys.items():
        column_slots = np.full(len(digests), -1, dtype=np.int64)
        for row, digest in enumerate(digests):
            if digest is None or digest not in outputs:
                continue
            slot = slot_of.get(digest)
            if slot is None:
                slot = slot_of[digest] = len(states)
                states.append(outputs[digest])
            column_slots[row] = slot
        slots[column] = column_slots
    lengths = np.array([length(state) for state in states], dtype=np.int64)
    return LowerRows(states, lengths, slots)


def check_columns(features: FeatureSet, cells: dict[str, list], modality: str) -> tuple[str, ...]:
    """The fine-tuned columns, each with a block in `features` and one cell per row."""
    if not cells:
        raise ValueError(f"fine-tuning the {modality} encoder needs at least one {modality} column")
    for column, values in cells.items():
        block = f"{modality}.{column}"
        if block not in features.inputs:
            raise ValueError(f"{modality} column {column!r}: no block {block!r} among the features")
        if len(values) != len(features.ids):
            raise ValueError(
                f"{modality} column {column!r}: {len(values)} {modality}s for {len(features.ids)} rows"
            )
    return tuple(sorted(cells))


# --- what training returns ------------------------------------------------------------------------


@dataclass
class FineTuned:
    """A fusion head and the encoder top it was trained with; both on CPU, eval mode, best epoch."""

    head: nn.Module
    top: nn.Module
    in_dims: dict[str, int]
    out_dim: int
    target_scaling: TargetScaling | None  # regression only
    # {epoch, train_loss, val_loss} and, when `evaluate.metric` picks the epoch, val_<metric>
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0  # the epochs only; the one-off lower pass is lower_seconds
    columns: tuple[str, ...] = ()  # columns whose blocks the top computes
    lower_seconds: float = 0.0  # reading and computing the cached lower outputs
    depth: int = 0  # units (layers, blocks) of the encoder fine-tuned
    computed: int = 0  # distinct contents run through the lower part by this call
    read: int = 0  # distinct contents whose lower output came from the cache
    epoch_seconds: list[dict[str, float]] = field(default_factory=list)  # {train, val} per epoch

    def with_lower(self, lower_seconds: float, cache: LowerOutputCache, depth: int) -> FineTuned:
        """This run with the lower pass's seconds and cache counts, and the depth it fine-tuned."""
        return replace(
            self, lower_seconds=lower_seconds, computed=cache.computed, read=cache.read, depth=depth
        )


# --- device tensors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    """Every row's other blocks, presence and target on the device; the lower outputs on CPU."""

    dense: dict[str, Tensor]  # block not computed by the top -> (N, D)
    present: dict[str, Tensor]  # every block -> (N,) bool; the top's blocks also need a content
    target: Tensor | None  # (N,) or (N, C), in the loss's form; None when predicting
    lower: LowerRows


def _rows(
    features: FeatureSet,
    lower: LowerRows,
    part: Part,
    task: str | None,
    scaling: TargetScaling | None,
    device: torch.device,
) -> _Rows:
    blocks = {part.block(column): column for column in lower.slots}
    dense = {
        name: _tensor(block, np.float32, device)
        for name, block in features.inputs.items()
        if name not in blocks
    }
    present = {}
    for name, mask in features.present.items():
        keep = np.asarray(mask, dtype=bool)
        if name in blocks:
            keep = keep & (lower.slots[blocks[name]] >= 0)
        present[name] = _tensor(keep, bool, device)
    target = None if task is None else _target(features.target, task, scaling, device)
    return _Rows(dense, present, target, lower)


def _target(target: np.ndarray, task: str, scaling: TargetScaling | None, device: torch.device) -> Tensor:
    if task == "multiclass":
        return _tensor(target, np.int64, device)  # (N,)
    values = _tensor(target, np.float32, device)  # (N,) or (N, C)
    return scaling.apply(values) if scaling is not None else values


def _tensor(array: np.ndarray, dtype: type, device: torch.device) -> Tensor:
    """`array` as `dtype` on `device`, sharing its memory on CPU where it can (a mapped block
    stays mapped). A read-only array, as pandas 3's `to_numpy` and Arrow hand out, is copied
    first: torch cannot share memory it must not write, and warns when asked to."""
    array = np.asarray(array, dtype=dtype)
    return torch.as_tensor(array if array.flags.writeable else array.copy(), device=device)


def _on(index: np.ndarray, like: Tensor) -> Tensor:
    return torch.as_tensor(index, device=like.device)


def _forward(
    head: nn.Module, part: Part, rows: _Rows, index: np.ndarray, present: dict[str, Tensor]
) -> Tensor:
    """Logits (b, out_dim) of rows `index`, the top's blocks computed from cached lower outputs."""
    device = next(head.parameters()).device
    picked = torch.as_tensor(index, device=device)  # (b,)
    inputs = {name: block.index_select(0, picked) for name, block in rows.dense.items()}  # (b, D)
    batch_present = {name: mask.index_select(0, picked) for name, mask in present.items()}  # (b,)
    with autocast_for(device):
        for column in rows.lower.columns:
            block = part.block(column)
            inputs[block] = _embed(part, rows.lower, column, index, batch_present[block], device)
        return head(inputs, batch_present)


def _embed(
    part: Part, lower: LowerRows, column: str, index: np.ndarray, present: Tensor, device: torch.device
) -> Tensor:
    """(b, D) embeddings of one column; rows hidden this batch stay zero and skip the top."""
    embedded = torch.zeros(len(index), part.dim, device=device)  # (b, D)
    chosen = np.flatnonzero(present.cpu().numpy())
    if chosen.size == 0:
        return embedded
    slots = lower.slots[column][index[chosen]]
    inputs = part.collate([lower.states[slot] for slot in slots], device)
    embedded[torch.as_tensor(chosen, device=device)] = part.top(*inputs).float()  # (p, D)
    return embedded


# --- training -------------------------------------------------------------------------------------


def fit_with_top(
    features: FeatureSet,
    lower: LowerRows,
    part: Part,
    task: str,
    fusion: FusionConfig,
    train: TrainConfig,
    schedule: FinetuneSchedule,
    eval_batch_size: int,
    progress: bool = True,
    deadline: float | None = None,
    metric: str | None = None,
) -> FineTuned:
    """Fit `fusion.head` and `part.top` together on the rows' other blocks and cached lower outputs.

    The top's blocks replace the features' frozen ones. `deadline` (time.time()) ends training
    before an epoch that would not end by it, keeping the best epoch so far, as train_model
    does for `train.time_limit`; `metric` picks that epoch as there (None: val loss), and
    `schedule.patience` epochs without progress on it stop training (a fine-tuning epoch costs
    about an extraction pass, so it gets its own, shorter patience than the heads'). Returns
    head and top on CPU in eval mode, at their best epoch; the caller fills in the lower-part
    fields.
    """
    check_task(task)
    features = head_features(features, fusion.head)
    train_rows, val_rows = split_indices(features)
    device = pick_device(train.device)
    top = part.top
    with _deterministic(device):
        _seed_everything(train.seed)
        in_dims = {name: int(block.shape[1]) for name, block in sorted(features.inputs.items())}
        in_dims.update({part.block(column): part.dim for column in lower.columns})
        out_dim, scaling, objective = fit_objective(task, features, train_rows, train, device)
        head = build_head(fusion, in_dims, out_dim).to(device)
        top.to(device)
        rows = _rows(features, lower, part, task, scaling, device)
        val_order = _val_order(val_rows, lower)
        patience = getattr(schedule, "patience", train.patience)
        choice = EpochChoice(task, metric, features.target[val_order], patience, scaling)
        began = time.perf_counter()
        fit = _fit(head, part, objective, rows, train_rows, val_order, train, schedule, eval_batch_size,
                   progress, deadline, choice)  # fmt: skip
        seconds = time.perf_counter() - began
    head.cpu().eval()
    top.cpu().eval()
    return FineTuned(
        head=head,
        top=top,
        in_dims=in_dims,
        out_dim=out_dim,
        target_scaling=scaling,
        history=fit.history,
        best_epoch=fit.best_epoch,
        train_seconds=seconds,
        columns=lower.columns,
        epoch_seconds=fit.epoch_seconds,
    )


def _val_order(val_rows: np.ndarray, lower: LowerRows) -> np.ndarray:
    """The val rows shortest content first: batches pad little, and the order never changes."""
    return val_rows[np.argsort(lower.row_lengths()[val_rows], kind="stable")]


@dataclass
class _Fit:
    history: list[dict[str, float]]
    best_epoch: int
    epoch_seconds: list[dict[str, float]]


def _fit(
    head: nn.Module,
    part: Part,
    objective: Objective,
    rows: _Rows,
    train_rows: np.ndarray,
    val_order: np.ndarray,
    train: TrainConfig,
    schedule: FinetuneSchedule,
    eval_batch_size: int,
    progress: bool,
    deadline: float | None,
    choice: EpochChoice,
) -> _Fit:
    """Epochs with early stopping; leaves the best validation epoch's weights in head and top."""
    top = part.top
    batches_per_epoch = math.ceil(len(train_rows) / schedule.batch_size)
    # Discriminative learning rates: a fresh head learns fast, pretrained layers must not be
    # pushed far from what made them useful.
    optimizer = torch.optim.AdamW(
        [
            {"params": list(head.parameters()), "lr": train.lr},
            {"params": list(top.parameters()), "lr": schedule.lr},
        ],
        weight_decay=train.weight_decay,
    )
    total = max(1, schedule.epochs * batches_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_then_linear_decay(total, round(schedule.warmup * total))
    )
    shuffler = torch.Generator().manual_seed(train.seed)  # batch order depends on the seed alone
    train_present = {name: mask.index_select(0, _on(train_rows, mask)) for name, mask in rows.present.items()}
    hider = ModalityDropout(train_present, train.modality_dropout, train.seed)
    lengths = rows.lower.row_lengths()
    history: list[dict[str, float]] = []
    seconds: list[dict[str, float]] = []
    best = _snapshot(head, top)
    with tqdm(range(1, schedule.epochs + 1), desc="fine-tune", unit="epoch", disable=not progress) as bar:
        for epoch in bar:
            began, wall = time.perf_counter(), time.time()
            batches = length_buckets(train_rows, lengths, schedule.batch_size, shuffler)
            present = (
                _scatter_present(rows.present, train_rows, hider.epoch_masks())
                if train.modality_dropout > 0
                else rows.present
            )
            train_loss = _train_epoch(
                head, part, objective, rows, batches, present, optimizer, scheduler, train
            )
            middle = time.perf_counter()
            task = choice.task if choice.wants_predictions else None
            val_loss, val_predictions = _evaluate_loss(
                head, part, objective, rows, val_order, eval_batch_size, task
            )
            seconds.append({"train": middle - began, "val": time.perf_counter() - middle})
            extra = choice.observe(epoch, val_loss, val_predictions)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **extra})
            bar.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}")
            if choice.improved:
                best = _snapshot(head, top)
            elif choice.exhausted:
                break
            if no_time_for_another(deadline, wall):
                break
    head.load_state_dict(best[0])
    top.load_state_dict(best[1])
    return _Fit(history, choice.best_epoch, seconds)


def _snapshot(head: nn.Module, top: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
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


def length_buckets(
    rows: np.ndarray, lengths: np.ndarray, batch_size: int, generator: torch.Generator
) -> list[np.ndarray]:
    """Shuffled batches of `rows` in which contents have similar lengths.

    Rows are shuffled, cut into windows of BUCKET_BATCHES batches, sorted by length within
    each window and cut into batches, whose order is shuffled again: padding to the batch's
    longest text then wastes little, while every epoch still sees new batches in a new order.
    Where every length is the same (images) this is a plain shuffle.
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
    part: Part,
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
    part.top.train()
    assert rows.target is not None
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    total = torch.zeros((), device=rows.target.device)  # accumulate on device: no sync per batch
    count = 0
    for index in batches:
        logits = _forward(head, part, rows, index, present)  # (b, out_dim)
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
            f"fine-tuning diverged (loss is not finite); try a lower {part.setting}.lr or "
            "train.lr, or set train.grad_clip"
        )
    return mean_loss


def _evaluate_loss(
    head: nn.Module,
    part: Part,
    objective: Objective,
    rows: _Rows,
    order: np.ndarray,
    batch_size: int,
    task: str | None = None,
) -> tuple[float, np.ndarray | None]:
    """Row-weighted mean loss in float32 (early stopping compares it across epochs) and, with
    `task`, the rows' predictions in `order` (to_prediction's form) for a chosen metric."""
    head.eval()
    part.top.eval()
    assert rows.target is not None
    total = 0.0
    outputs = []
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            logits = _forward(head, part, rows, index, rows.present).float()  # (b, out_dim)
            target = rows.target.index_select(0, _on(index, rows.target))
            total += float(objective.loss(logits, target)) * len(index)
            if task is not None:
                outputs.append(to_prediction(task, logits).cpu())
    predictions = torch.cat(outputs).numpy() if outputs else None
    return total / max(1, len(order)), predictions


# --- prediction -----------------------------------------------------------------------------------


def predict_with_top(
    head: nn.Module,
    part: Part,
    features: FeatureSet,
    lower: LowerRows,
    task: str,
    target_scaling: tuple[float, float] | None,
    batch_size: int,
) -> np.ndarray:
    """Predictions in tasks.train.training.predict's form, the top's blocks recomputed by it.

    binary -> P(class 1) (N,); multiclass -> probabilities (N, C); multilabel -> label
    probabilities (N, C); regression -> values (N,) on the original scale. Runs where `head`
    lives; `features` holds the blocks the head was trained on.
    """
    check_task(task)
    if task == "regression" and target_scaling is None:
        raise ValueError("regression predictions need the target_scaling from training")
    device = next(head.parameters()).device
    part.top.to(device).eval()
    head.eval()
    rows = _rows(features, lower, part, None, None, device)
    # Shortest contents first, so each batch pads little; the result is put back in row order.
    order = np.argsort(lower.row_lengths(), kind="stable")
    # An empty table still runs one (empty) batch, so the result keeps its (0, C) shape.
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    outputs = []
    with torch.no_grad():
        for index in batches or [order]:
            logits = _forward(head, part, rows, index, rows.present)  # (b, out_dim)
            outputs.append(to_prediction(task, logits.float()).cpu())
    prediction = torch.cat(outputs).numpy()
    prediction = prediction[np.argsort(order, kind="stable")]
    if task == "regression" and target_scaling is not None:
        mean, std = target_scaling
        prediction = prediction * std + mean
    return prediction
