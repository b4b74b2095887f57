"""Train a fusion head on cached embeddings.

Batches are cut with index tensors from the blocks as they come, which on CPU are views of
the feature arrays (memory-mapped at scale, tasks/features/mapped.py): a shuffled batch reads
its rows from the page cache, so training needs the feature files' size on disk plus one
batch, never a copy of the table. On CUDA a split's rows are copied to the device once, in
chunks. A DataLoader would only add per-batch Python overhead. The loop is deliberately
plain: seeded, early-stopped on validation loss, and deterministic on CPU so that two runs
of the pipeline give the same metrics; with `evaluate.metric` chosen, that metric on the val
rows picks the epoch instead (tasks/train/best_epoch.py). Options
(params `train:`) add class weights, a per-batch LR schedule, gradient clipping and
modality dropout; none of them adds per-batch host work beyond a few tensor ops.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from modelzoo.heads.base import FusionHead
from modelzoo.heads.blocks import is_wide_block
from modelzoo.registry import build_head as registry_build_head
from modelzoo.registry import lookup
from tasks.config import FusionConfig, TrainConfig
from tasks.device import pick_device
from tasks.errors import DataError, FuselineError
from tasks.train.best_epoch import EpochChoice
from tasks.train.dataset import REFIT_SPLITS, FeatureSet, modality_of
from tasks.train.objectives import TASKS, Objective, balanced_weights, check_target, check_task, to_prediction
from tasks.train.objectives import output_dim as _output_dim
from tasks.train.schedules import make_scheduler

__all__ = [
    "TASKS",
    "ModalityDropout",
    "TargetScaling",
    "TrainResult",
    "build_head",
    "fit_objective",
    "fit_target_scaling",
    "head_features",
    "output_dim",
    "predict",
    "refit_model",
    "split_indices",
    "train_model",
]  # fmt: skip  (TASKS is re-exported: callers have imported it from here)

Batch = tuple[dict[str, Tensor], dict[str, Tensor]]
# Called after each epoch with the val predictions in natural units (predict's form, in the val
# rows' order); True stops training there. The search's pruner listens through it.
EpochReport = Callable[[int, np.ndarray], bool]


class TargetScaling(NamedTuple):
    """Mean/std of the training target, so regression trains on a unit-scale target.

    Kept with the model because predictions must be mapped back with the same numbers. A
    NamedTuple so that it is also the plain (mean, std) pair a bundle's JSON stores.
    """

    mean: float
    std: float

    def apply(self, y: Tensor) -> Tensor:
        return (y - self.mean) / self.std


@dataclass
class TrainResult:
    """Everything later steps need: the model, how to rebuild it, and how training went."""

    model: nn.Module  # on CPU, in eval mode, best validation epoch's weights
    in_dims: dict[str, int]
    out_dim: int
    target_scaling: TargetScaling | None  # regression only
    # {epoch, train_loss, val_loss} and, when `evaluate.metric` picks the epoch, val_<metric>
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0


def train_model(
    features: FeatureSet,
    task: str,
    fusion: FusionConfig,
    train: TrainConfig,
    progress: bool = True,
    deadline: float | None = None,
    metric: str | None = None,
    on_epoch: EpochReport | None = None,
) -> TrainResult:
    """Fit `fusion.head` on the train rows, early-stopping on the val rows.

    `deadline` (time.time()) ends training before an epoch that would not end by it (the last
    epoch's duration says), keeping the best epoch so far: how `train.time_limit` stops a
    member cleanly; the first epoch always runs. `metric` (a chosen `evaluate.metric`) picks
    the best epoch on val, the val loss breaking ties; None: the val loss alone (`auto`).
    `on_epoch` hears every epoch's val predictions and may stop training (a pruned trial).
    """
    check_task(task)
    features = head_features(features, fusion.head)
    train_at, val_at = split_indices(features)
    device = pick_device(train.device)
    with _deterministic(device):
        _seed_everything(train.seed)
        in_dims = {name: int(block.shape[1]) for name, block in sorted(features.inputs.items())}
        out_dim, scaling, objective = fit_objective(task, features, train_at, train, device)
        model = build_head(fusion, in_dims, out_dim).to(device)
        train_data = _to_device(features, train_at, task, scaling, device)
        val_data = _to_device(features, val_at, task, scaling, device)
        choice = EpochChoice(task, metric, features.target[val_at], train.patience, scaling)
        started = time.perf_counter()
        history, best_epoch = _fit(model, objective, train_data, val_data, train, device, progress, deadline,
                                   choice, on_epoch)  # fmt: skip
        seconds = time.perf_counter() - started
    model.cpu().eval()
    return TrainResult(model, in_dims, out_dim, scaling, history, best_epoch, seconds)


def refit_model(
    features: FeatureSet,
    task: str,
    fusion: FusionConfig,
    train: TrainConfig,
    epochs: int,
    progress: bool = True,
) -> TrainResult:
    """Fit `fusion.head` afresh on the train and val rows together, for `epochs` epochs.

    Early stopping on val chose `epochs`; with val's rows now learned from, nothing is left to
    stop on, so the count is fixed and the last epoch's weights are kept (tasks/train/refit.py
    says when this pays). Same seed, options and schedule shape as train_model: an epoch is
    the same share of the schedule, only longer. The history records the train loss alone.
    """
    check_task(task)
    features = head_features(features, fusion.head)
    rows = np.flatnonzero(np.isin(features.split, REFIT_SPLITS))
    if len(rows) == 0:
        raise DataError("no rows in the train and val splits to refit on; check data.split")
    device = pick_device(train.device)
    with _deterministic(device):
        _seed_everything(train.seed)
        in_dims = {name: int(block.shape[1]) for name, block in sorted(features.inputs.items())}
        out_dim, scaling, objective = fit_objective(task, features, rows, train, device)
        model = build_head(fusion, in_dims, out_dim).to(device)
        data = _to_device(features, rows, task, scaling, device)
        optimizer, scheduler, shuffler, hider = _optimisation(model, data, train)
        history: list[dict[str, float]] = []
        started = time.perf_counter()
        for epoch in tqdm(range(1, epochs + 1), desc="refit", unit="epoch", disable=not progress):
            order = torch.randperm(data.n_rows, generator=shuffler).to(device)
            present = hider.epoch_masks()
            loss = _train_epoch(model, objective, data, present, order, optimizer, scheduler, train, device)
            history.append({"epoch": epoch, "train_loss": loss})
        seconds = time.perf_counter() - started
    model.cpu().eval()
    return TrainResult(model, in_dims, out_dim, scaling, history, epochs, seconds)


def predict(
    model: nn.Module,
    features: FeatureSet,
    task: str,
    target_scaling: tuple[float, float] | None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Predictions in the task's natural units.

    binary -> P(class 1) (N,); multiclass -> probabilities (N, C); multilabel -> independent
    label probabilities (N, C); regression -> values (N,) on the original target scale.
    `target_scaling` is the (mean, std) from training (a TargetScaling or the plain pair a
    bundle stores); regression only. Rows whose blocks are marked absent are predicted from
    the head's learned "missing" embeddings, so every row gets a prediction.
    """
    check_task(task)
    if task == "regression" and target_scaling is None:
        # Without it the numbers would be silently on the standardised scale.
        raise ValueError("regression predictions need the target_scaling from training")
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    with torch.no_grad():
        for batch in _row_batches(features, batch_size, device):
            logits = model(*batch).float()  # (b, out_dim)
            outputs.append(to_prediction(task, logits).cpu())
    prediction = torch.cat(outputs).numpy()
    if task == "regression" and target_scaling is not None:
        mean, std = target_scaling
        prediction = prediction * std + mean
    return prediction


# --- set-up -----------------------------------------------------------------------------


def output_dim(task: str, features: FeatureSet) -> int:
    """One logit for binary/regression, one per class (multiclass) or label (multilabel)."""
    return _output_dim(task, features.target, features.classes)


def embed(model: FusionHead, features: FeatureSet, batch_size: int = 1024) -> np.ndarray:
    """(N, E) fused representation of each row: what the head's output layer reads."""
    device = next(model.parameters()).device
    model.eval()
    parts = []
    with torch.no_grad():
        for batch in _row_batches(features, batch_size, device):
            parts.append(model.predict_and_embed(*batch)[1].float().cpu())
    return torch.cat(parts).numpy()


def head_features(features: FeatureSet, head: str) -> FeatureSet:
    """The blocks a head reads: hashed `*.__wide__` blocks only for heads that declare them.

    The wide blocks are written for every run (so switching heads needs no re-extraction),
    but they hold feature ids, not features: a dense head would read them as numbers.
    """
    head_cls = cast("type[FusionHead]", lookup("head", head))
    if head_cls.consumes_wide_blocks:
        return features
    keep = [name for name in features.inputs if not is_wide_block(name)]
    if not keep:
        raise DataError(f"head {head!r} has no input blocks to read (only hashed wide blocks)")
    return features.select_blocks(keep)


def fit_objective(
    task: str, features: FeatureSet, train_at: np.ndarray, train: TrainConfig, device: torch.device
) -> tuple[int, TargetScaling | None, Objective]:
    """(out_dim, regression scaling, loss) for the target, each fitted on the train rows alone.

    The head and the fine-tuned top are trained against the same target the same way: the
    target checked against its width, standardised for regression and, with
    `train.class_weight`, its classes weighted, never looking at val or test rows.
    """
    out_dim = output_dim(task, features)
    check_target(task, features.target, out_dim)
    train_target = features.target[train_at]
    scaling = fit_target_scaling(train_target) if task == "regression" else None
    weight = balanced_weights(task, train_target, out_dim) if train.class_weight else None
    return out_dim, scaling, Objective(task, weight).to(device)


def fit_target_scaling(target: np.ndarray) -> TargetScaling:
    """Standardise on train rows only, so validation/test never leak into the scaling."""
    mean = float(np.mean(target, dtype=np.float64))
    std = float(np.std(target, dtype=np.float64))
    # A constant target would divide by zero; leave its scale alone instead.
    return TargetScaling(mean, std if std > 1e-12 else 1.0)


def build_head(fusion: FusionConfig, in_dims: dict[str, int], out_dim: int) -> nn.Module:
    """The head named in params, with its validated options (modelzoo.registry.build_head)."""
    return registry_build_head(fusion.head, in_dims, out_dim, fusion.head_config())


def split_indices(features: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the train and val rows: the splits are never copied out of the table.

    Fine-tuning also calls it before its (costly) lower pass, so an empty split fails first.
    """
    train_at = np.flatnonzero(features.split == "train")
    val_at = np.flatnonzero(features.split == "val")
    if len(train_at) == 0:
        raise DataError("no rows in the train split; check data.split")
    if len(val_at) == 0:
        raise DataError("no rows in the val split; early stopping needs validation rows")
    return train_at, val_at


def _seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on CPU for the duration of training, then the caller's setting back.

    Only on CPU: on CUDA it would demand CUBLAS_WORKSPACE_CONFIG and slower kernels, and
    bf16 autocast is not bit-reproducible across GPUs anyway.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


# --- tensors ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _DeviceData:
    """One split, ready for the loop: blocks to cut batches from, and the split's own rows.

    On CPU `inputs` are views of the whole table's blocks (nothing copied) and `rows` are the
    split's positions in them; on CUDA `inputs` hold only the split's rows, copied once, and
    `rows` counts them. Presence masks and targets are the split's (small: a byte or a few
    per row), because modality dropout redraws them per epoch.
    """

    inputs: dict[str, Tensor]  # block -> (M, D), float32 or float16 (cast per batch)
    rows: Tensor  # (N,) int64: the split's positions in `inputs`
    present: dict[str, Tensor]  # block -> (N,) bool
    # (N,) float32 (binary; regression standardised), (N,) int64 (multiclass), (N, C) float32
    # 0/1 (multilabel)
    target: Tensor

    @property
    def n_rows(self) -> int:
        return int(self.target.shape[0])


def _to_device(
    features: FeatureSet,
    positions: np.ndarray,
    task: str,
    scaling: TargetScaling | None,
    device: torch.device,
) -> _DeviceData:
    if device.type == "cpu":
        inputs = {k: _tensor(v) for k, v in features.inputs.items()}
        rows = torch.as_tensor(positions, dtype=torch.int64)
    else:
        inputs = {k: _gather(v, positions, device) for k, v in features.inputs.items()}
        rows = torch.arange(len(positions), device=device)
    present = {
        k: torch.as_tensor(np.asarray(v[positions], dtype=bool), device=device)
        for k, v in features.present.items()
    }
    values = features.target[positions]
    if task == "multiclass":
        target = torch.as_tensor(values, dtype=torch.int64, device=device)
    else:  # binary and regression (N,), multilabel (N, C): float32
        target = torch.as_tensor(values, dtype=torch.float32, device=device)
        if task != "multilabel" and scaling is not None:
            target = scaling.apply(target)
    return _DeviceData(inputs, rows, present, target)


def _tensor(array: np.ndarray) -> Tensor:
    """A CPU tensor sharing the array's memory (a mapped file stays mapped); copies only a
    read-only array, which torch would otherwise warn about."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _gather(array: np.ndarray, positions: np.ndarray, device: torch.device, chunk: int = 65_536) -> Tensor:
    """Rows `positions` of a block on the device, copied a chunk at a time (bounded host memory)."""
    out = torch.empty((len(positions), array.shape[1]), dtype=_torch_dtype(array.dtype), device=device)
    for start in range(0, len(positions), chunk):
        part = np.ascontiguousarray(array[positions[start : start + chunk]])
        out[start : start + len(part)] = torch.from_numpy(part).to(device, non_blocking=True)
    return out


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.float16 if dtype == np.float16 else torch.float32


def _row_batches(features: FeatureSet, batch_size: int, device: torch.device) -> Iterator[Batch]:
    """Consecutive batches of rows as float32 tensors on the device, read as they are needed.

    An empty table still yields one (empty) batch, so predictions keep their (0, C) shape.
    """
    n_rows = len(features.ids)
    for start in range(0, n_rows, batch_size) if n_rows else (0,):
        stop = min(start + batch_size, n_rows)
        inputs = {
            k: _tensor(np.ascontiguousarray(v[start:stop])).to(device).float()
            for k, v in features.inputs.items()
        }
        present = {
            k: torch.as_tensor(np.asarray(v[start:stop], dtype=bool), device=device)
            for k, v in features.present.items()
        }
        yield inputs, present


def _take(data: _DeviceData, index: Tensor, present: dict[str, Tensor] | None = None) -> Batch:
    """Batch `index` (positions within the split) of every block: (b, D) float32 and (b,) masks.

    `present` replaces the split's own masks (modality dropout's per-epoch draw).
    """
    rows = data.rows.index_select(0, index.to(data.rows.device))
    masks = data.present if present is None else present
    return (
        {k: v.index_select(0, rows).float() for k, v in data.inputs.items()},
        {k: v.index_select(0, index) for k, v in masks.items()},
    )


# --- the loop ---------------------------------------------------------------------------


def _fit(
    model: nn.Module,
    objective: Objective,
    train_data: _DeviceData,
    val_data: _DeviceData,
    cfg: TrainConfig,
    device: torch.device,
    progress: bool,
    deadline: float | None,
    choice: EpochChoice,
    on_epoch: EpochReport | None = None,
) -> tuple[list[dict[str, float]], int]:
    """Epochs with early stopping; leaves the best validation epoch's weights in `model`."""
    optimizer, scheduler, shuffler, hider = _optimisation(model, train_data, cfg)
    history: list[dict[str, float]] = []
    best_state = copy.deepcopy(model.state_dict())
    with tqdm(range(1, cfg.epochs + 1), desc="train", unit="epoch", disable=not progress) as bar:
        for epoch in bar:
            began = time.time()
            order = torch.randperm(train_data.n_rows, generator=shuffler).to(device)
            present = hider.epoch_masks()
            train_loss = _train_epoch(
                model, objective, train_data, present, order, optimizer, scheduler, cfg, device
            )
            task = choice.task if choice.wants_predictions or on_epoch is not None else None
            val_loss, val_predictions = _evaluate_loss(model, objective, val_data, cfg.batch_size, task)
            extra = choice.observe(epoch, val_loss, val_predictions)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **extra})
            bar.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}")
            if choice.improved:
                best_state = copy.deepcopy(model.state_dict())
            if on_epoch is not None and on_epoch(epoch, natural_units(val_predictions, choice.scaling)):
                break
            if choice.exhausted or no_time_for_another(deadline, began):
                break
    model.load_state_dict(best_state)
    return history, choice.best_epoch


def _optimisation(
    model: nn.Module, data: _DeviceData, cfg: TrainConfig
) -> tuple[
    torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None, torch.Generator, ModalityDropout
]:
    """The optimiser, its per-batch schedule, the batch shuffler and modality dropout of a fit."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg, math.ceil(data.n_rows / cfg.batch_size))
    # Shuffle with a private CPU generator: the order depends on the seed alone, not on the
    # device or on whatever else consumed the global RNG. Modality dropout has its own, so
    # switching it on does not change the order of the batches.
    shuffler = torch.Generator().manual_seed(cfg.seed)
    return optimizer, scheduler, shuffler, ModalityDropout(data.present, cfg.modality_dropout, cfg.seed)


def no_time_for_another(deadline: float | None, began: float) -> bool:
    """Whether an epoch as long as the one that began at `began` would end past `deadline`.

    Stopping before such an epoch, not after it, keeps a time limit a limit when epochs are
    long (a fine-tuned encoder's can take minutes).
    """
    if deadline is None:
        return False
    now = time.time()
    return now + (now - began) > deadline


def natural_units(predictions: np.ndarray | None, scaling: tuple[float, float] | None) -> np.ndarray:
    """A loop's val predictions as predict returns them: regression back on the target's scale."""
    assert predictions is not None  # the loop predicts whenever an EpochReport listens
    if scaling is None:
        return predictions
    mean, std = scaling
    return predictions.astype(np.float64) * std + mean


class ModalityDropout:
    """Hides whole modalities of random train rows, one fresh draw per epoch.

    A row keeps each modality with probability 1 - p; all blocks of a hidden modality are
    marked absent together (the head then sees its learned "missing" embeddings), so the
    model learns to predict without the image, the text, ... A draw that would leave a row
    none of the modalities it actually has (its presence masks, not the list of modalities)
    hides none of them: a row with nothing left teaches nothing.
    Masks are drawn on CPU from a private generator, so they depend on the seed alone.
    """

    def __init__(self, present: dict[str, Tensor], p: float, seed: int) -> None:
        self.present = present
        self.p = p
        self.modalities = sorted({modality_of(name) for name in present})
        self.generator = torch.Generator().manual_seed(seed + 1)
        column = {m: i for i, m in enumerate(self.modalities)}
        has = torch.zeros(next(iter(present.values())).shape[0], len(self.modalities), dtype=torch.bool)
        for name, mask in present.items():
            has[:, column[modality_of(name)]] |= mask.cpu()
        self.has = has  # (N, M): which modalities each row really has

    def epoch_masks(self) -> dict[str, Tensor]:
        """block -> (N,) bool presence for this epoch (the real masks when p == 0)."""
        if self.p == 0 or len(self.modalities) < 2:
            return self.present
        n_rows = next(iter(self.present.values())).shape[0]
        hide = torch.rand(n_rows, len(self.modalities), generator=self.generator) < self.p  # (N, M)
        hide &= (self.has & ~hide).any(dim=1, keepdim=True)  # a row left with nothing hides nothing
        device = next(iter(self.present.values())).device
        keep = (~hide).to(device)  # (N, M)
        column = {m: i for i, m in enumerate(self.modalities)}
        return {name: mask & keep[:, column[modality_of(name)]] for name, mask in self.present.items()}


def _train_epoch(
    model: nn.Module,
    objective: Objective,
    data: _DeviceData,
    present: dict[str, Tensor],
    order: Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    cfg: TrainConfig,
    device: torch.device,
) -> float:
    """One pass over the train rows in `order`; returns the row-weighted mean loss."""
    model.train()
    total = torch.zeros((), device=device)  # accumulate on device: no sync per batch
    for index in order.split(cfg.batch_size):
        inputs, batch_present = _take(data, index, present)
        with _autocast(device):
            logits = model(inputs, batch_present)  # (b, out_dim)
        loss = objective.loss(logits.float(), data.target.index_select(0, index))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach() * index.numel()
    mean_loss = float(total) / data.n_rows
    if not math.isfinite(mean_loss):
        raise FuselineError(
            "training diverged (loss is not finite); try a lower train.lr or set train.grad_clip"
        )
    return mean_loss


def _evaluate_loss(
    model: nn.Module, objective: Objective, data: _DeviceData, batch_size: int, task: str | None = None
) -> tuple[float, np.ndarray | None]:
    """Row-weighted mean loss, in float32 even on CUDA, and with `task` the rows' predictions.

    Early stopping compares these numbers across epochs, so they should not carry bf16 noise.
    The predictions (to_prediction's form; regression standardised) are for a chosen metric.
    """
    model.eval()
    rows = torch.arange(data.n_rows, device=data.target.device)
    total = torch.zeros((), device=data.target.device)
    outputs = []
    with torch.no_grad():
        for index in rows.split(batch_size):
            logits = model(*_take(data, index)).float()  # (b, out_dim)
            total += objective.loss(logits, data.target.index_select(0, index)) * index.numel()
            if task is not None:
                outputs.append(to_prediction(task, logits))
    predictions = torch.cat(outputs).cpu().numpy() if outputs else None
    return float(total) / data.n_rows, predictions


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on CUDA (tensor-core matmuls; unlike fp16 it needs no loss scaling)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
