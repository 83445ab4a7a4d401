"""CoPrompt's consistency terms (Roy & Etemad, ICLR 2024), as its public code computes them.

Reference ShuvenduRoy/CoPrompt `trainers/coprompt.py` (`CustomCLIP.forward`):

    L = CE + W * (L_text + L_image)

* `L_text`: the learned class features (after the learner's text adapter, normalised) against a
  frozen *description teacher*: the plain text tower's features of one LLM-written description per
  class, the same description index for every class, drawn anew each step (`random.randint` over
  the descriptions; not an average). The engine draws the index and fills
  `StepState.description_text_feats` from `data.descriptions`.
* `L_image`: the learner's image features of the batch's view (after its image adapter, normalised)
  against the frozen image tower's features of a *second augmented view* of the same images
  (`StepState.teacher_image_feats`; Dassl `K_TRANSFORMS: 2`).
* `distill="cosine"` (`TRAINER.DISTILL`, the released setting): `1 - mean cos` over the rows, with
  `CosineSimilarity(dim=1, eps=1e-7)`; `"mse"`: the reference's other branch, `F.mse_loss` (mean over
  all elements) between the normalised features.

Both teachers are re-normalised here as the reference does at every step. One weight `W` multiplies
both terms in the reference: the terms are `text` and `image` with weight 1.0 each (`TRAINER.W: 1.0`
in its yaml; the per-dataset table of the `coprompt` preset sets both, e.g. 0.1 on EuroSAT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from tailprompt.objectives.base import OBJECTIVES, ObjectiveContext, ObjectiveSpec, StepState, per_image_mean
from tailprompt.tensors import unit

Distill = Literal["cosine", "mse"]

# The reference's `torch.nn.CosineSimilarity(dim=1, eps=1e-07)`.
_COSINE_EPS = 1e-7


def distillation_loss(student: Tensor, teacher: Tensor, distill: Distill = "cosine") -> Tensor:
    """Distance of `student` `[N, D]` to a constant `teacher` `[N, D]` (rows paired).

    `cosine`: `1 - mean_i cos(s_i, t_i)`; `mse`: `mean((s - t)^2)` over all elements.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must have one shape")
    teacher = teacher.detach()
    if distill == "cosine":
        return 1.0 - F.cosine_similarity(student, teacher, dim=-1, eps=_COSINE_EPS).mean()
    if distill == "mse":
        return F.mse_loss(student, teacher)
    raise ValueError(f"distill: expected 'cosine' or 'mse', got {distill!r}")


def description_consistency_loss(text_feats: Tensor, description_feats: Tensor, distill: Distill = "cosine") -> Tensor:
    """CoPrompt's text term: learned class features against one description's frozen features per class.

    Args:
        text_feats: learned class features `[K, D]` (or `[B, K, D]`: per image, averaged).
        description_feats: frozen features `[K, D]` of the step's description index.
        distill: "cosine" (reference default) or "mse".
    """
    teacher = unit(description_feats)
    return per_image_mean(text_feats, lambda t: distillation_loss(t, teacher, distill))


def image_consistency_loss(image_feats: Tensor, teacher_image_feats: Tensor, distill: Distill = "cosine") -> Tensor:
    """CoPrompt's image term: the learner's features of view 1 `[B, D]` against the frozen tower's
    features of view 2 `[B, D]` of the same images."""
    return distillation_loss(image_feats, unit(teacher_image_feats), distill)


@dataclass
class CoPromptObjectiveConfig:
    """`distill`: the reference's `TRAINER.DISTILL` (cosine in every released config)."""

    distill: Distill = "cosine"


def build_coprompt(cfg: CoPromptObjectiveConfig, context: ObjectiveContext):
    def terms(state: StepState) -> dict[str, Tensor]:
        if state.description_text_feats is None or state.teacher_image_feats is None:
            raise ValueError("coprompt: the step carries no description or teacher-view features")
        return {
            "text": description_consistency_loss(state.text_feats, state.description_text_feats, cfg.distill),
            "image": image_consistency_loss(state.image_feats, state.teacher_image_feats, cfg.distill),
        }

    return terms


OBJECTIVES.register(
    "coprompt",
    ObjectiveSpec(
        CoPromptObjectiveConfig,
        build_coprompt,
        default_weights={"text": 1.0, "image": 1.0},
        reads=frozenset({"description_text_feats", "teacher_image_feats"}),
    ),
)

__all__ = [
    "CoPromptObjectiveConfig",
    "description_consistency_loss",
    "distillation_loss",
    "image_consistency_loss",
]
