"""The in-memory table that training and evaluation work on.

Features are small once encoded (a few KB per row), so they are held as dense arrays:
one per input block, keyed like `tabular`, `text.title`, `image.photo`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# The splits a refit member learns from (tasks/train/refit.py): val's rows join train's once
# they have chosen the epochs, rounds and weights.
REFIT_SPLITS = ("train", "val")


@dataclass(frozen=True)
class FeatureSet:
    """Encoded rows: one float32 block per input, a presence mask per input, and the target.

    Attributes:
        ids: row ids (N,), as strings.
        split: "train" | "val" | "test" per row (N,).
        target: (N,) float32 for binary/regression, int64 class index for multiclass.
        inputs: block name -> (N, D) float32. Block names are `<modality>.<column>` except the
            single `tabular` block; the modality is the part before the first dot.
        present: block name -> (N,) bool; False where the row has no value for that block.
        classes: class labels in index order (classification), else empty.
    """

    ids: np.ndarray
    split: np.ndarray
    target: np.ndarray
    inputs: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    classes: tuple[str, ...] = ()

    def rows(self, mask: np.ndarray) -> FeatureSet:
        """The subset of rows where `mask` is True."""
        return FeatureSet(
            ids=self.ids[mask],
            split=self.split[mask],
            target=self.target[mask],
            inputs={k: v[mask] for k, v in self.inputs.items()},
            present={k: v[mask] for k, v in self.present.items()},
            classes=self.classes,
        )

    def of_split(self, name: str) -> FeatureSet:
        return self.rows(self.split == name)

    def select_blocks(self, names: Iterable[str]) -> FeatureSet:
        """The same rows with only the named blocks, in the order given."""
        names = list(names)
        return FeatureSet(
            ids=self.ids,
            split=self.split,
            target=self.target,
            inputs={k: self.inputs[k] for k in names},
            present={k: self.present[k] for k in names},
            classes=self.classes,
        )

    def only_modalities(self, modalities: set[str]) -> FeatureSet:
        """Keep the blocks of some modalities: how single-modality baselines are made."""
        return self.select_blocks(k for k in self.inputs if modality_of(k) in modalities)

    @property
    def modalities(self) -> list[str]:
        return sorted({modality_of(k) for k in self.inputs})


def modality_of(block: str) -> str:
    return block.split(".", 1)[0]


def with_blocks(features: FeatureSet, blocks: dict[str, int]) -> FeatureSet:
    """The FeatureSet restricted to the blocks a model was trained on."""
    missing = [b for b in blocks if b not in features.inputs]
    if missing:
        raise KeyError(f"features lack blocks the model needs: {missing}")
    return features.select_blocks(blocks)
