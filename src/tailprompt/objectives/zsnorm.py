"""ZS-Norm (Murugesan et al., ECCV 2024): cross-entropy on logits rescaled to the zero-shot range.

Per sample, with adapted logits `o` and frozen zero-shot logits `z` (same logit scale):

    o' = (o - min o) / (max o - min o) · (max z - min z) + min z,      L = CE(o', y)

(`Bala93/CLIPCalib` prompt-learning branch `coop_zs.py`; TCPT's `eccv_zs`; calibration_and_longtail.md
§1.3). It *replaces* the plain cross-entropy, so a preset lists `zsnorm` without `cross_entropy`.
Predictions at test time use the raw adapted logits, as the reference does. The reference has no
guard against a zero logit range; here the range is clamped at `eps` (identical whenever it is larger).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from tailprompt.objectives.base import OBJECTIVES, ObjectiveContext, ObjectiveSpec, StepState


def zero_shot_range_logits(logits: Tensor, zeroshot_logits: Tensor, eps: float = 1e-6) -> Tensor:
    """Min-max rescale each row of `logits [B, K]` onto the range of `zeroshot_logits [B, K]` (constant)."""
    zs = zeroshot_logits.detach()
    lo = logits.min(dim=1, keepdim=True).values
    hi = logits.max(dim=1, keepdim=True).values
    z_lo = zs.min(dim=1, keepdim=True).values
    z_hi = zs.max(dim=1, keepdim=True).values
    return (logits - lo) / (hi - lo).clamp(min=eps) * (z_hi - z_lo) + z_lo


def zsnorm_loss(logits: Tensor, zeroshot_logits: Tensor, labels: Tensor, eps: float = 1e-6) -> Tensor:
    """`CE(o', y)` with `o'` the zero-shot-range-normalised logits (`[B, K]`, `[B, K]`, `[B]`)."""
    return F.cross_entropy(zero_shot_range_logits(logits, zeroshot_logits, eps), labels)


@dataclass
class ZSNormConfig:
    eps: float = 1e-6  # floor of the adapted logit range (the reference divides without one)

    def __post_init__(self) -> None:
        if self.eps <= 0:
            raise ValueError(f"eps: expected a positive number, got {self.eps}")


def build_zsnorm(cfg: ZSNormConfig, context: ObjectiveContext):
    def terms(state: StepState) -> dict[str, Tensor]:
        return {"ce": zsnorm_loss(state.logits, state.zeroshot_logits, state.labels, cfg.eps)}

    return terms


OBJECTIVES.register(
    "zsnorm",
    ObjectiveSpec(
        ZSNormConfig, build_zsnorm, default_weights={"ce": 1.0}, reads=frozenset({"zeroshot_logits"})
    ),
)
