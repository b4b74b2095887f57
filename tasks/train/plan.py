"""Which models a train run fits, in what order, within what time: the presets.

`fast` fits the fused head, the same head on each modality alone, the gradient-boosted member
(tasks/train/boosted.py; not for multilabel) and the scikit-learn linear baseline; the ensemble
is chosen among those. `best` allows more boosting rounds and adds the fused head with other
seeds, other fusion heads and, for each modality whose plug-in can fine-tune its encoder
(`fine_tunable`), a model with the encoder's top fine-tuned (the depth its plug-in picks),
cheapest first, so a time limit cuts the expensive members rather than the baselines. A
fine-tuned member asked for in params (`encoders.<modality>.finetune`) is trained under
either preset. Under `best` a hyperparameter search (tasks/train/search.py) runs first, and
its winners join the plan as `fused_tuned` and `boosted_tuned`, right after the boosted
member (`with_tuned`).

`train.time_limit` is a limit on the whole stage: members (and the search) work to a deadline
`TAIL_SHARE` of the limit before it, which leaves the ensemble's val predictions and the
writing of models/ room to finish inside it. With `train.refit` the refit of the kept members
(tasks/train/refit.py) needs time after them too: members trained one after another (the
local runner) each stop early by what refitting those before them would take (`RefitReserve`,
known once they are trained); members trained side by side on a cluster stop `REFIT_SHARE` of
their time earlier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tasks.config import FusionConfig, Params, TrainConfig
from tasks.modalities import fine_tunable
from tasks.scores.model_names import FUSED

FINETUNED = "finetuned_"  # a fine-tuned member's kind and name: finetuned_<modality>
BOOSTED = "boosted"  # the gradient-boosted member's kind and name
BOOSTED_TASKS = ("binary", "multiclass", "regression")
BEST_EXTRA_SEEDS = 2  # the fused head again with seeds seed+1, seed+2
BEST_OTHER_HEADS = ("gated", "attention", "concat")  # dense heads that read the same blocks
# The share of `train.time_limit` kept for what follows the members: val predictions of every
# member for the ensemble, the selection, and writing models/ (a few seconds on 20,000 rows).
TAIL_SHARE = 0.05
# With `train.refit` and members trained side by side (dask, ray), the share of the members' time
# (search included) kept for refitting the kept ones on train + val: a head's refit costs its
# best epochs again, a booster its kept rounds; fine-tuned members are not refit. One after
# another, the members keep back what they measured instead (RefitReserve).
REFIT_SHARE = 0.1


@dataclass(frozen=True)
class MemberSpec:
    """One model to fit: a head on some modalities' blocks, or a model with a fine-tuned encoder."""

    name: str
    kind: str  # "head" | "boosted" | "finetuned_<modality>"
    fusion: FusionConfig
    train: TrainConfig
    modalities: tuple[str, ...] | None = None  # None: every modality
    tuned: str | None = None  # a fine-tuned member: the modality whose encoder it fine-tunes
    finetune_depth: int = 0  # its top units trained (`encoders.<tuned>.finetune.<depth key>`)
    # A member the search chose (`*_tuned`): the settings of its best trial, in name order. A
    # head's are already in `fusion` and `train`; a boosted member's override its SETTINGS.
    searched: tuple[tuple[str, float], ...] = ()

    @property
    def required(self) -> bool:
        """The fused head is trained whatever the time limit: the pipeline needs one model."""
        return self.name == FUSED


@dataclass(frozen=True)
class Skipped:
    """What train_member returns for a member it did not train, and why (in `tried`'s status)."""

    reason: str


@dataclass(frozen=True)
class Budget:
    """`train.time_limit` as a wall-clock deadline (time.time(), so cluster workers share it)."""

    deadline: float | None

    @classmethod
    def start(cls, seconds: float | None) -> Budget:
        """The members' deadline: `seconds` from now less the tail's share (TAIL_SHARE)."""
        return cls(None if seconds is None else time.time() + seconds * (1 - TAIL_SHARE))

    def share(self, fraction: float) -> Budget:
        """A budget ending after `fraction` of the time left (unlimited stays unlimited)."""
        left = self.left()
        return self if left is None else Budget(time.time() + fraction * left)

    def less(self, seconds: float) -> Budget:
        """A budget ending `seconds` before this one (unlimited stays unlimited)."""
        return self if self.deadline is None else Budget(self.deadline - seconds)

    def exhausted(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.time())


def finetuned_kind(modality: str) -> str:
    return FINETUNED + modality


def member_plan(params: Params, modalities: list[str]) -> list[MemberSpec]:
    """The members to fit, in order (see the module docstring)."""
    fusion, train = params.fusion, params.train
    plan = [MemberSpec(FUSED, "head", fusion, train)]
    if len(modalities) > 1:
        plan += [MemberSpec(m, "head", fusion, train, modalities=(m,)) for m in modalities]
    if boosted_skip_reason(params.data.task) is None:
        plan.append(MemberSpec(BOOSTED, BOOSTED, fusion, train))  # seconds: before the costly members
    best = params.train.preset == "best"
    if best:
        for offset in range(1, BEST_EXTRA_SEEDS + 1):
            seed = (train.seed + offset) % 2**32
            plan.append(
                MemberSpec(f"{FUSED}_seed{seed}", "head", fusion, train.model_copy(update={"seed": seed}))
            )
        for head in BEST_OTHER_HEADS:
            if head != fusion.head:
                other = FusionConfig.model_validate({**fusion.options(), "head": head})
                plan.append(MemberSpec(f"head_{head}", "head", other, train))
    tuned = []
    for modality in fine_tunable():
        tuning = modality.fine_tuning
        if tuning is None or modality.name not in modalities:
            continue
        section = modality.encoder_section(params.encoders)
        depth = tuning.depth_of(section) or (tuning.best_depth(modality, section.model) if best else 0)
        if depth:
            kind = finetuned_kind(modality.name)
            spec = MemberSpec(kind, kind, fusion, train, tuned=modality.name, finetune_depth=depth)
            tuned.append((tuning.cost, spec))
    return plan + [spec for _, spec in sorted(tuned, key=lambda pair: pair[0])]


def with_tuned(plan: list[MemberSpec], tuned: list[MemberSpec]) -> list[MemberSpec]:
    """`plan` with the search's members after the boosted member (else after the single
    modalities): they cost what the member they tune costs, less than the extra seeds and heads."""
    if not tuned:
        return plan
    cheap = [
        i for i, spec in enumerate(plan) if spec.kind == BOOSTED or spec.name == FUSED or spec.modalities
    ]
    at = max(cheap) + 1
    return plan[:at] + tuned + plan[at:]


def boosted_skip_reason(task: str) -> str | None:
    """Why the plan has no boosted member for `task`, in words; None when it has one."""
    if task in BOOSTED_TASKS:
        return None
    return (
        f"no boosted member for {task}: it would be one booster per label, each stopped on its own; "
        "the fusion heads cover it"
    )


def requested_finetuned(params: Params) -> list[str]:
    """The fine-tuned members params ask for (a depth in `encoders.<modality>.finetune`), in
    the modalities' order."""
    return [
        finetuned_kind(m.name)
        for m in fine_tunable()
        if m.fine_tuning is not None and m.fine_tuning.depth_of(m.encoder_section(params.encoders))
    ]
