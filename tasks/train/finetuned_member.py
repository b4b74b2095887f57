"""Fine-tuning an encoder's top with the fusion head, as an ensemble member, for every modality
whose plug-in declares how to split its encoder (tasks.modalities.base.FineTuning).

The frozen lower part's output is a pure function of the content, so it is computed once per
distinct content (the plug-in's `contents`, keyed as extraction keys them) and cached
(tasks.train.lower_cache); an epoch (tasks.train.finetune_loop) runs only the top and the head.
The member's bundle adds the top's weights and finetune.json (tasks.train.finetuned_files);
loading refuses weights changed since training and a base encoder other than the recorded one.

Under a time limit the lower pass is what can blow it (14 minutes for 22,000 texts on a CPU),
so it is paid for only when it fits: a few batches spread over the contents (shortest to
longest) are run first and timed, with the top on one of them, and when the rest of the pass
plus `ESTIMATED_EPOCHS` epochs would not end before the deadline the member is skipped
(OverBudget, which `tried` records as `skipped (estimated N s > M s left)`). The rest runs in
chunks, the estimate redone from the pace so far before each. Entries computed before a skip
stay in the cache for the next run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Self

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from modelzoo.encoders.split import SplitTop
from tasks.config import FusionConfig, Params, TrainConfig
from tasks.device import autocast_for, pick_device
from tasks.errors import BundleError
from tasks.modalities import fine_tunable, modality
from tasks.modalities.base import EmbeddedModality, FineTuning
from tasks.train import finetune_loop as loop
from tasks.train.bundle import BundleMeta, load_bundle
from tasks.train.dataset import FeatureSet, with_blocks
from tasks.train.finetuned_files import read_top_files, write_top_files
from tasks.train.lower_cache import LowerOutputCache
from tasks.train.plan import Budget, MemberSpec, finetuned_kind
from tasks.train.training import TrainResult

PROBE_BATCHES = 3  # lower-pass batches timed before committing to the rest: shortest, middle, longest
CHUNK_BATCHES = 8  # lower-pass batches between two checks of the deadline
ESTIMATED_EPOCHS = 2  # epochs the estimate counts: one to learn, one to see val move
BACKWARD_FACTOR = 3.0  # a training step costs about three forward passes (forward + backward)


class OverBudget(Exception):
    """A fine-tuned member that cannot finish in the time left; its message is `tried`'s reason."""

    def __init__(self, estimated: float, left: float) -> None:
        super().__init__(f"estimated {estimated:.0f} s > {left:.0f} s left")
        self.estimated, self.left = estimated, left


def fine_tuning(modality: EmbeddedModality, section: Any, encoder: nn.Module | None = None) -> FineTuning:
    """How to fine-tune the encoder `section` names (`encoder`: already loaded); ValueError if none."""
    if modality.fine_tuning is None:
        raise ValueError(f"the {modality.name} encoder cannot be fine-tuned (its plug-in declares no split)")
    if encoder is None:
        encoder = modality.load_encoder(section.model, modality.size_of(section))
    return modality.fine_tuning(modality, encoder, section)


def train_finetuned(
    tuning: FineTuning,
    features: FeatureSet,
    rows: pd.DataFrame,
    columns: list[str],
    task: str,
    fusion: FusionConfig,
    train: TrainConfig,
    cache_dir: Path,
    root: Path | None = None,
    progress: bool = True,
    deadline: float | None = None,
    metric: str | None = None,
) -> loop.FineTuned:
    """Fit `fusion.head` and the encoder's top `finetune.<depth_key>` units together on the aligned
    `rows` of `features` (file cells under `root`): one top computes block `<modality>.<column>`
    of every column, as one frozen encoder did; `deadline` and `metric` work as in train_model."""
    depth = tuning.depth_of(tuning.section)
    if depth < 1:
        raise ValueError(
            f"{tuning.setting}.{tuning.depth_key} is 0 (a frozen encoder): train with train_model"
        )
    train_at, val_at = loop.split_indices(features)  # before the lower pass: an empty split fails now
    lower, top = tuning.split(depth)
    started = time.perf_counter()
    cache = LowerOutputCache(cache_dir, tuning, lower, pick_device(train.device), progress)
    fill = None
    if deadline is not None:
        epochs = min(ESTIMATED_EPOCHS, tuning.section.finetune.epochs)
        fill = FillBudget(deadline, top, epochs, len(train_at), len(val_at))
    lowered = _lower_rows(cache, features, rows, columns, root, fill)
    lower_seconds = time.perf_counter() - started
    section = tuning.section
    fitted = loop.fit_with_top(features, lowered, _part(tuning, top), task, fusion, train, section.finetune,
                               section.batch_size, progress, deadline, metric)  # fmt: skip
    return fitted.with_lower(lower_seconds, cache, depth)


def predict_finetuned(
    tuning: FineTuning,
    head: nn.Module,
    top: SplitTop,
    features: FeatureSet,
    rows: pd.DataFrame,
    columns: list[str],
    task: str,
    target_scaling: tuple[float, float] | None,
    cache_dir: Path,
    root: Path | None = None,
) -> np.ndarray:
    """Predictions in tasks.train.training.predict's form, where `head` lives, its blocks from `top`."""
    lower = tuning.top_class.lower_part(tuning.encoder, top.lower_depth)
    cache = LowerOutputCache(cache_dir, tuning, lower, next(head.parameters()).device, progress=False)
    lowered = _lower_rows(cache, features, rows, columns, root)
    return loop.predict_with_top(head, _part(tuning, top), features, lowered, task, target_scaling,
                                 tuning.section.batch_size)  # fmt: skip


def _lower_rows(
    cache: LowerOutputCache,
    features: FeatureSet,
    rows: pd.DataFrame,
    columns: list[str],
    root: Path | None,
    fill: FillBudget | None = None,
) -> loop.LowerRows:
    """Each column's rows (each a block in `features`) pointing at their contents' lower outputs;
    with `fill`, computed only while they fit the time limit (else OverBudget)."""
    tuning = cache.tuning
    present = {column: rows[column] for column in columns if column in rows}
    columns = list(loop.check_columns(features, present, tuning.modality.name))
    contents = tuning.modality.contents(rows, columns, root, "the fine-tuned rows")
    digests = [key.hex() for key in contents.keys]
    keys = {
        column: [digests[slot] if slot >= 0 else None for slot in block.slots]
        for column, block in zip(columns, contents.blocks, strict=True)
    }
    wanted = dict(sorted(zip(digests, contents.sources, strict=True)))
    outputs = cache.outputs(wanted) if fill is None else fill.outputs(cache, wanted, len(columns))
    return loop.lower_rows(keys, outputs, tuning.length)


@dataclass
class FillBudget:
    """The time limit inside a fine-tuned member's lower pass (see the module docstring)."""

    deadline: float  # time.time()
    top: nn.Module  # the top to be trained: timed on one probe batch
    epochs: int  # epochs the estimate counts
    train_rows: int
    val_rows: int
    computed: int = 0  # contents run through the lower part so far
    seconds: float = 0.0  # and the time they took
    epoch_seconds: float = field(default=0.0, init=False)

    def outputs(self, cache: LowerOutputCache, wanted: dict[str, Any], columns: int) -> dict[str, Tensor]:
        """cache.outputs(wanted), in whole batches of the order one call would run them in (so the
        outputs are the same), checking before each chunk that the rest still fits."""
        stored = {d: s for d, s in wanted.items() if cache.path_of(d).is_file()}
        found = cache.outputs(stored)  # reading is cheap beside computing
        missing = cache.tuning.order([(d, s) for d, s in wanted.items() if d not in stored])
        size = cache.batch_size
        batches = [missing[i : i + size] for i in range(0, len(missing), size)]
        probes = sorted(
            {int(round(i)) for i in np.linspace(0, len(batches) - 1, min(PROBE_BATCHES, len(batches)))}
        )
        found.update(self._run(cache, [item for i in probes for item in batches[i]]))
        self._time_top(cache, found, [batches[probes[len(probes) // 2]]] if probes else [], columns)
        rest = [batch for i, batch in enumerate(batches) if i not in probes]
        for start in range(0, len(rest), CHUNK_BATCHES):
            remaining = sum(len(batch) for batch in rest[start:])
            self._check(remaining * self.seconds / max(1, self.computed))
            found.update(
                self._run(cache, [item for batch in rest[start : start + CHUNK_BATCHES] for item in batch])
            )
        self._check(0.0)
        return found

    def _run(self, cache: LowerOutputCache, items: list[tuple[str, Any]]) -> dict[str, Tensor]:
        began = time.perf_counter()
        out = cache.outputs(dict(items)) if items else {}
        self.seconds += time.perf_counter() - began
        self.computed += len(items)
        return out

    def _time_top(
        self,
        cache: LowerOutputCache,
        found: dict[str, Tensor],
        probe: list[list[tuple[str, Any]]],
        columns: int,
    ) -> None:
        """An epoch's cost from one batch through the top (forward only, in eval mode so that no
        state moves; a training step counts BACKWARD_FACTOR times that)."""
        digests = [d for batch in probe for d, _ in batch if d in found] or list(found)[: cache.batch_size]
        if not digests:
            return
        device, was_training = cache.device, self.top.training
        home = next(self.top.parameters()).device
        self.top.to(device).eval()
        began = time.perf_counter()
        with torch.no_grad(), autocast_for(device):
            self.top(*cache.tuning.collate([found[d] for d in digests], device))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        per_row = (time.perf_counter() - began) / len(digests)
        self.top.to(home).train(was_training)
        self.epoch_seconds = per_row * columns * (BACKWARD_FACTOR * self.train_rows + self.val_rows)

    def _check(self, fill_left: float) -> None:
        """OverBudget when the rest of the pass and the counted epochs would end past the deadline."""
        estimated = fill_left + self.epochs * self.epoch_seconds
        left = self.deadline - time.time()
        if estimated > left:
            raise OverBudget(estimated, max(0.0, left))


def _part(tuning: FineTuning, top: SplitTop) -> loop.Part:
    return loop.Part(tuning.modality.name, top, top.dim, tuning.collate, tuning.setting)


@dataclass
class FinetunedResult(TrainResult):
    """TrainResult (the head as `model`) plus a fine-tuned encoder top and how it was made."""

    top: nn.Module | None = None
    columns: tuple[str, ...] = ()
    cache_dir: str = ""  # the lower-output cache it was trained with (absolute)
    lower_seconds: float = 0.0
    modality: str = ""  # whose encoder
    section: Any = None  # its `encoders.<modality>` settings, with the depth trained
    root: Path | None = None  # where its file cells are (file modalities)

    @classmethod
    def from_fitted(cls, fitted: loop.FineTuned, cache_dir: str | Path, **extra: Any) -> Self:
        """A fine-tuning run's result as this member's; its time includes the one-off lower pass."""
        return cls(model=fitted.head, in_dims=fitted.in_dims, out_dim=fitted.out_dim,
                   target_scaling=fitted.target_scaling, history=fitted.history, best_epoch=fitted.best_epoch,
                   train_seconds=fitted.train_seconds + fitted.lower_seconds, top=fitted.top,
                   columns=fitted.columns, cache_dir=str(Path(cache_dir).resolve()),
                   lower_seconds=fitted.lower_seconds, **extra)  # fmt: skip

    def member(self, meta: BundleMeta) -> FinetunedMember:
        """The trained model as an ensemble member (tasks.train.members.Member)."""
        tuning = fine_tuning(modality(self.modality), self.section)
        return FinetunedMember(self.model, meta, tuning, self.top, self.columns, self.cache_dir, self.root)

    def write_extras(self, directory: Path) -> None:
        """The top's weights and finetune.json beside the head bundle in `directory`."""
        assert self.top is not None
        tuning = modality(self.modality).fine_tuning
        assert tuning is not None
        info = {
            "kind": finetuned_kind(self.modality),
            tuning.depth_key: tuning.depth_of(self.section),
            "columns": list(self.columns),
            self.modality: self.section.model_dump(mode="json"),
        }
        write_top_files(directory, self.modality, self.top, info)


def fit_finetuned(
    features: FeatureSet, params: Params, spec: MemberSpec, budget: Budget, rows: pd.DataFrame
) -> FinetunedResult:
    """The member `spec` names, for a fine-tuned kind; `rows` are the aligned rows of `features`."""
    tuned = modality(str(spec.tuned))
    assert tuned.fine_tuning is not None
    section = tuned.fine_tuning.with_depth(tuned.encoder_section(params.encoders), spec.finetune_depth)
    root, metric = tuned.root(params.data), params.evaluate.epoch_metric(params.data.task)
    fitted = train_finetuned(
        fine_tuning(tuned, section), features, rows, tuned.columns(params.data), params.data.task,
        spec.fusion, spec.train, Path(params.cache.dir), root, deadline=budget.deadline, metric=metric,
    )  # fmt: skip
    return FinetunedResult.from_fitted(
        fitted, params.cache.dir, modality=tuned.name, section=section, root=root
    )


@dataclass
class FinetunedMember:
    """Predicts with the fine-tuned top on the rows' raw cells and the head on every other block."""

    head: nn.Module
    meta: BundleMeta
    tuning: FineTuning  # with its base encoder, loaded once per member
    top: Any
    columns: tuple[str, ...]
    cache_dir: str
    root: Path | None  # where relative file cells are; an absolute cell is read as it is

    def predict(self, features: FeatureSet, rows: pd.DataFrame) -> np.ndarray:
        features = with_blocks(features, self.meta.in_dims)
        return predict_finetuned(
            self.tuning, self.head, self.top, features, rows, list(self.columns), self.meta.task,
            self.meta.target_scaling, Path(self.cache_dir), self.root,
        )  # fmt: skip


def load_finetuned_member(directory: Path, cache_dir: str | Path, name: str) -> FinetunedMember:
    """The member written by FinetunedResult.write_extras for modality `name`; BundleError where
    its top's weights changed, or do not fit the base encoder here, or that encoder is another."""
    head, meta = load_bundle(directory)
    info, state = read_top_files(directory, name)
    tuned = modality(name)
    try:
        tuning = fine_tuning(tuned, tuned.encoder_config.model_validate(info[name]))
        _check_base_weights(directory, tuning, meta)
        top = tuning.top_class.rebuild(tuning.encoder, state, int(info[tuning.depth_key]))
        columns = tuple(str(c) for c in info["columns"])
        root = tuned.root(SimpleNamespace(**meta.params.get("data", {})))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        raise BundleError(
            f"{directory}: fine-tuned {name} weights do not fit their encoder ({err})"
        ) from None
    return FinetunedMember(head, meta, tuning, top, columns, str(cache_dir), root)


def _check_base_weights(directory: Path, tuning: FineTuning, meta: BundleMeta) -> None:
    """The lower part comes from the encoder here: it must be the one the bundle records (if any)."""
    name, encoder = tuning.modality.name, tuning.encoder
    record = (meta.encoders or {}).get(name)
    recorded, here = (record or {}).get("weights_digest"), tuning.fingerprint()["weights_digest"]
    if record is not None and recorded != here:
        raise BundleError(
            f"{directory}: the {name} encoder here ({encoder.model_id!r}, weights {here}) is not the one "
            f"the fine-tuned {name} model was trained on (weights {recorded}); retrain (dvc repro) "
            "or install those weights"
        )


def member_loaders(cache_dir: str | Path) -> dict[str, Callable[[Path], Any]]:
    """Member kind -> loader(directory), for kinds that need more than a head bundle."""
    load = partial(load_finetuned_member, cache_dir=cache_dir)
    return {finetuned_kind(m.name): partial(load, name=m.name) for m in fine_tunable()}
