"""Which models a train run fits, in what order, within what time: the presets.

`fast` fits the fused head, the same head on each modality alone and the scikit-learn linear
baseline; the ensemble is chosen among those. `best` adds the fused head with other seeds,
other fusion heads and, where there are images and text, a model with the image encoder's
last block fine-tuned and one with the text encoder's top layers fine-tuned, cheapest first,
so a time limit cuts the expensive members rather than the baselines. A fine-tuned member
asked for in params (`encoders.<modality>.finetune`) is trained under either preset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from modelzoo.encoders.image_finetune import splittable
from modelzoo.encoders.loading import image_architecture
from tasks.config import FusionConfig, Params, TrainConfig
from tasks.modalities import modality, tuned_by
from tasks.scores.model_names import FUSED

FINETUNED_TEXT = "finetuned_text"
FINETUNED_IMAGE = "finetuned_image"
BEST_EXTRA_SEEDS = 2  # the fused head again with seeds seed+1, seed+2
BEST_OTHER_HEADS = ("gated", "attention", "concat")  # dense heads that read the same blocks
BEST_FINETUNE_LAYERS = 2  # what `best` fine-tunes when params leave the encoder frozen
# EfficientNet-Lite0's last block and head conv on cached 7 x 7 maps: an epoch costs well under
# one frozen extraction pass (bench/finetune.py), cheaper than the text layers, so it goes first.
BEST_FINETUNE_BLOCKS = 1


@dataclass(frozen=True)
class MemberSpec:
    """One model to fit: a head on some modalities' blocks, or a model with a fine-tuned encoder."""

    name: str
    kind: str  # "head" | "finetuned_text" | "finetuned_image"
    fusion: FusionConfig
    train: TrainConfig
    modalities: tuple[str, ...] | None = None  # None: every modality
    finetune_layers: int = 0  # finetuned_text: top transformer layers trained
    finetune_blocks: int = 0  # finetuned_image: last residual blocks trained

    @property
    def required(self) -> bool:
        """The fused head is trained whatever the time limit: the pipeline needs one model."""
        return self.name == FUSED


@dataclass(frozen=True)
class Budget:
    """`train.time_limit` as a wall-clock deadline (time.time(), so cluster workers share it)."""

    deadline: float | None

    @classmethod
    def start(cls, seconds: float | None) -> Budget:
        return cls(None if seconds is None else time.time() + seconds)

    def exhausted(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.time())


def member_plan(params: Params, modalities: list[str]) -> list[MemberSpec]:
    """The members to fit, in order (see the module docstring)."""
    fusion, train = params.fusion, params.train
    plan = [MemberSpec(FUSED, "head", fusion, train)]
    if len(modalities) > 1:
        plan += [MemberSpec(m, "head", fusion, train, modalities=(m,)) for m in modalities]
    layers = params.encoders.text.finetune.layers
    blocks = params.encoders.image.finetune.blocks
    text, image = tuned_by(FINETUNED_TEXT), tuned_by(FINETUNED_IMAGE)  # the plug-ins declare them
    if params.train.preset == "best":
        for offset in range(1, BEST_EXTRA_SEEDS + 1):
            seed = (train.seed + offset) % 2**32
            plan.append(
                MemberSpec(f"{FUSED}_seed{seed}", "head", fusion, train.model_copy(update={"seed": seed}))
            )
        for head in BEST_OTHER_HEADS:
            if head != fusion.head:
                other = FusionConfig.model_validate({**fusion.options(), "head": head})
                plan.append(MemberSpec(f"head_{head}", "head", other, train))
        layers = layers or _best_layers(text, params.encoders.text.model)
        if not blocks and image in modalities:
            blocks = _best_blocks(params.encoders.image.model)
    if blocks and image in modalities:
        plan.append(MemberSpec(FINETUNED_IMAGE, FINETUNED_IMAGE, fusion, train, finetune_blocks=blocks))
    if layers and text in modalities:
        plan.append(MemberSpec(FINETUNED_TEXT, FINETUNED_TEXT, fusion, train, finetune_layers=layers))
    return plan


def _best_layers(text: str | None, model: str) -> int:
    """What `best` fine-tunes of a text encoder nobody asked to fine-tune: its top layers, unless
    it has none (tfidf, fitted on the data rather than a transformer)."""
    return 0 if text is None or modality(text).fitted(model) else BEST_FINETUNE_LAYERS


def _best_blocks(model: str) -> int:
    """What `best` fine-tunes of an image encoder nobody asked to fine-tune: its last block, where
    its layout allows it (EfficientNet, ResNet), else nothing: a preset must not fail a run
    over an encoder that was only ever meant to stay frozen. Asked for in params, an
    unsupported encoder is an error instead (modelzoo.encoders.image_finetune)."""
    network = image_architecture(model)
    return BEST_FINETUNE_BLOCKS if network is not None and splittable(network) else 0
