"""What the fused model relies on: permutation importance and the head's own block weights.

Permutation importance shuffles one input column across the test rows and measures how much
the primary metric worsens: model-agnostic, and in the metric's own units. A tabular column is
one group of one-hot/scaled features inside the `tabular` block (plus, for wide_deep, its hashed
wide ids); a text or image column is a whole block, shuffled together with its presence mask so
a missing value moves with its row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from modelzoo.heads.base import FusionHead
from tasks.features.tabular import TabularState
from tasks.features.wide import TABULAR_WIDE, TEXT_WIDE, WideState
from tasks.train.dataset import FeatureSet, modality_of

TABULAR = "tabular"


@dataclass(frozen=True)
class BlockPart:
    """Where a column lives in one input block: some positions, or the whole block (index None)."""

    block: str
    index: np.ndarray | None  # positions inside the block; None: the whole block and its mask


@dataclass(frozen=True)
class FeatureGroup:
    """One column a user declared, located in every input block that carries it.

    A tabular column has one-hot/scaled slots in `tabular` and, for wide_deep, its hashed id
    (and the ids of the crosses it is part of) in `tabular.__wide__`: shuffling one without
    the other would leave the model a copy of what was meant to be hidden.
    """

    name: str  # the column name from params.yaml
    modality: str
    parts: tuple[BlockPart, ...]


def feature_groups(
    in_dims: dict[str, int],
    tabular_state: dict | None,
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    wide_state: dict | None = None,
) -> list[FeatureGroup]:
    """Every declared column as a group, in block order (tabular columns in encoding order).

    The tabular positions follow tasks.features.tabular.transform_tabular: each categorical column is
    `len(vocab) + 2` one-hot slots, then each numeric column is value + missing flag, in the
    order the columns are declared in params (`categorical`, `numeric`). That order is passed
    in rather than read from the state, because stored states are JSON written with sorted
    keys: their dict order is alphabetical, not the order the block was built in. The wide
    ids follow tasks.features.wide: one per categorical, then per numeric column, then crosses.
    """
    tabular_columns = [*categorical, *numeric]
    parts: dict[str, list[BlockPart]] = {column: [] for column in tabular_columns}
    groups: dict[str, FeatureGroup] = {}
    declared = (list(categorical), list(numeric))
    if TABULAR in in_dims:
        for column, index in _tabular_slots(in_dims[TABULAR], tabular_state, *declared):
            parts[column].append(BlockPart(TABULAR, index))
    if TABULAR_WIDE in in_dims:
        for column, index in _wide_slots(in_dims[TABULAR_WIDE], wide_state, *declared):
            parts[column].append(BlockPart(TABULAR_WIDE, index))
    for block in sorted(in_dims):
        if modality_of(block) == TABULAR:
            continue
        name = block.split(".", 1)[-1]
        groups[block] = FeatureGroup(name, modality_of(block), (BlockPart(block, None),))
    if TEXT_WIDE in groups:
        _place_text_ngrams(groups, wide_state)
    tabular = [FeatureGroup(c, TABULAR, tuple(parts[c])) for c in tabular_columns if parts[c]]
    return tabular + list(groups.values())


def _place_text_ngrams(groups: dict[str, FeatureGroup], wide_state: dict | None) -> None:
    """One text column: its n-gram ids join its embedding. Several: the shared n-gram block is a
    group of its own, named after them, since its ids do not say which column they came from."""
    ngrams = groups.pop(TEXT_WIDE)
    role = modality_of(TEXT_WIDE)
    text = WideState.from_json(wide_state).text if wide_state else []
    owner = f"{role}.{text[0]}" if len(text) == 1 else None
    if owner in groups:
        group = groups[owner]
        groups[owner] = FeatureGroup(group.name, group.modality, group.parts + ngrams.parts)
    else:
        name = f"n-grams of {', '.join(text) or role} (wide)"
        groups[TEXT_WIDE] = FeatureGroup(name, role, ngrams.parts)


def _tabular_slots(
    width: int, tabular_state: dict | None, categorical: list[str], numeric: list[str]
) -> list[tuple[str, np.ndarray]]:
    if tabular_state is None:
        raise ValueError("the model has a tabular block but the bundle carries no tabular state")
    state = TabularState.from_json(tabular_state)
    if sorted(state.categorical) != sorted(categorical) or sorted(state.numeric) != sorted(numeric):
        raise ValueError(
            f"tabular state columns {sorted(state.categorical)} + {sorted(state.numeric)} differ from the "
            f"declared {sorted(categorical)} + {sorted(numeric)}"
        )
    if state.width != width:
        raise ValueError(f"tabular state is {state.width} wide but the model's block is {width}")
    widths = [(c, len(state.categorical[c]) + 2) for c in categorical] + [(c, 2) for c in numeric]
    slots, start = [], 0
    for column, size in widths:
        slots.append((column, np.arange(start, start + size)))
        start += size
    return slots


def _wide_slots(
    width: int, wide_state: dict | None, categorical: list[str], numeric: list[str]
) -> list[tuple[str, np.ndarray]]:
    """Each tabular column's id slot plus the slots of every cross that reads it."""
    if wide_state is None:
        raise ValueError(f"the model has a {TABULAR_WIDE} block but the bundle carries no wide state")
    crosses = [list(cross) for cross in wide_state["crosses"]]
    stored = [*wide_state["categorical"], *wide_state["numeric_edges"]]
    if sorted(stored) != sorted([*categorical, *numeric]) or len(stored) + len(crosses) != width:
        raise ValueError(
            f"wide state columns {sorted(stored)} + {len(crosses)} crosses do not make the model's "
            f"{TABULAR_WIDE} block of {width}"
        )
    own = {column: position for position, column in enumerate([*categorical, *numeric])}
    first_cross = len(own)
    return [
        (
            column,
            np.array([own[column]] + [first_cross + j for j, cross in enumerate(crosses) if column in cross]),
        )
        for column in own
    ]


def permuted(features: FeatureSet, group: FeatureGroup, order: np.ndarray) -> FeatureSet:
    """`features` with the group's values taken from rows `order` (all else untouched)."""
    inputs = dict(features.inputs)
    present = dict(features.present)
    for part in group.parts:
        if part.index is None:
            inputs[part.block] = features.inputs[part.block][order]
            present[part.block] = features.present[part.block][order]
        else:
            block = inputs[part.block].copy()
            block[:, part.index] = block[order][:, part.index]
            inputs[part.block] = block
    return FeatureSet(features.ids, features.split, features.target, inputs, present, features.classes)


def permutation_importance(
    score: Callable[[FeatureSet], float],
    features: FeatureSet,
    groups: list[FeatureGroup],
    repeats: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Drop in `score` (higher is better) when each group is shuffled, mean and std over repeats.

    Positive means the model uses the column; around zero means it does not; the std says how
    much of that is shuffle noise. Rows are sorted by importance, largest first.
    """
    baseline = score(features)
    rng = np.random.default_rng(seed)
    rows = []
    for group in groups:
        drops = [
            baseline - score(permuted(features, group, rng.permutation(len(features.ids))))
            for _ in range(repeats)
        ]
        rows.append(
            {
                "feature": group.name,
                "modality": group.modality,
                "importance": float(np.mean(drops)),
                "std": float(np.std(drops)),
                "repeats": repeats,
            }
        )
    table = pd.DataFrame(rows, columns=["feature", "modality", "importance", "std", "repeats"])
    return table.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)


# --- weights the head exposes -----------------------------------------------------------


def block_weights(model: FusionHead, features: FeatureSet, batch_size: int = 1024) -> pd.DataFrame | None:
    """(N rows x blocks) weight the head gives each input block, where it has such weights; else None.

    `FusionHead.block_weights` answers per row (attention, gates averaged over units, a
    late-fusion mixture); most heads have none, which is not an error.
    """
    device = next(model.parameters()).device
    model.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(features.ids), batch_size):
            rows = slice(start, start + batch_size)
            inputs = {
                k: torch.as_tensor(v[rows], dtype=torch.float32, device=device)
                for k, v in features.inputs.items()
            }
            present = {
                k: torch.as_tensor(v[rows], dtype=torch.bool, device=device)
                for k, v in features.present.items()
            }
            weights = model.block_weights(inputs, present)  # (b, K) or None
            if weights is None:
                return None
            parts.append(
                pd.DataFrame(weights.detach().float().cpu().numpy(), columns=list(model.block_names))
            )
    return pd.concat(parts, ignore_index=True) if parts else None


def weights_by_group(weights: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Mean weight of each block per label: long form (label, block, weight, rows) for plots and tables."""
    frame = weights.assign(label=np.asarray(labels))
    means = frame.groupby("label", sort=True).mean()
    counts = frame.groupby("label", sort=True).size()
    long = means.reset_index().melt(id_vars="label", var_name="block", value_name="weight")
    long["rows"] = long["label"].map(counts).astype(int)
    return long
