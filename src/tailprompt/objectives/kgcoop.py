"""KgCoOp's knowledge-guided term (Yao et al., CVPR 2023), as its public code computes it.

`L_kg = 1 - mean_k cos(w_k, w_clip_k)` with `w_k` the learned class text features and `w_clip_k`
the frozen backbone's features of the dataset's hand-crafted template. The paper writes a squared
L2 distance; `htyao89/KgCoOp:KgCoOp/trainers/kgcoop.py` uses one minus the mean cosine, and its
scripts weight it by `W = 8.0` (peers.md §2.3). On unit vectors the two differ only by a factor 2
(`||a - b||^2 = 2 - 2 cos`), so the code's form with weight 8 is what produced the published numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tailprompt.objectives.base import OBJECTIVES, ObjectiveContext, ObjectiveSpec, StepState, per_image_mean
from tailprompt.tensors import unit


@dataclass
class KgCoOpConfig:
    """KgCoOp's guidance term has no options besides its weight (`weights: {guidance: 8.0}`)."""


def knowledge_guidance_loss(text_feats: Tensor, frozen_text_feats: Tensor) -> Tensor:
    """`1 - mean_k cos(w_k, w_clip_k)`.

    Args:
        text_feats: learned class features `[K, D]`, or `[B, K, D]` for instance-conditioned
            learners (then the term is computed per image and averaged).
        frozen_text_feats: frozen class features `[K, D]`; treated as a constant (no gradient).
    """
    frozen = unit(frozen_text_feats.detach())

    def one(t: Tensor) -> Tensor:
        return 1.0 - (unit(t) * frozen).sum(-1).mean()

    return per_image_mean(text_feats, one)


def build_kgcoop(cfg: KgCoOpConfig, context: ObjectiveContext):
    def terms(state: StepState) -> dict[str, Tensor]:
        return {"guidance": knowledge_guidance_loss(state.text_feats, state.frozen_text_feats)}

    return terms


OBJECTIVES.register("kgcoop", ObjectiveSpec(KgCoOpConfig, build_kgcoop, default_weights={"guidance": 8.0}))
