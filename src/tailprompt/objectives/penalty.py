"""Zero-shot range penalty (Murugesan et al., ECCV 2024), used with cross-entropy.

    L = CE(o, y) + λ · [ mean ReLU(o - max z) + mean ReLU(min z - o) ],   λ = 10

with `o` the adapted logits, `z` the frozen zero-shot logits (same scale), max/min per sample and the
means over all B x K entries (`Bala93/CLIPCalib` prompt-learning branch `coop_constr.py`; TCPT's
`eccv_penalty`, which hard-codes λ = 10; calibration_and_longtail.md §1.3). This file provides the
bracketed term; λ is its default weight and the preset adds `cross_entropy`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from tailprompt.objectives.base import OBJECTIVES, ObjectiveContext, ObjectiveSpec, StepState


def zero_shot_range_penalty(logits: Tensor, zeroshot_logits: Tensor) -> Tensor:
    """`mean ReLU(o - max_k z) + mean ReLU(min_k z - o)`; `logits`, `zeroshot_logits` `[B, K]`, z constant."""
    zs = zeroshot_logits.detach()
    z_hi = zs.max(dim=1, keepdim=True).values
    z_lo = zs.min(dim=1, keepdim=True).values
    return F.relu(logits - z_hi).mean() + F.relu(z_lo - logits).mean()


@dataclass
class PenaltyConfig:
    """No options besides the weight (`weights: {penalty: 10.0}`)."""


def build_penalty(cfg: PenaltyConfig, context: ObjectiveContext):
    def terms(state: StepState) -> dict[str, Tensor]:
        return {"penalty": zero_shot_range_penalty(state.logits, state.zeroshot_logits)}

    return terms


OBJECTIVES.register(
    "penalty",
    ObjectiveSpec(
        PenaltyConfig, build_penalty, default_weights={"penalty": 10.0}, reads=frozenset({"zeroshot_logits"})
    ),
)
