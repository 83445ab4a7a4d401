"""One forward pass of a learner and the objective terms on it: shared by training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tailprompt.objectives import Objective, StepState


@dataclass
class BoundObjective:
    """A built objective of the run: its name, what it computes, the weight of each term and what it reads."""

    name: str
    objective: Objective
    weights: dict[str, float]
    reads: frozenset[str] = frozenset()


def scaled_logits(image_feats: Tensor, text_feats: Tensor, scale: float) -> Tensor:
    """`scale * cos`: image [B, D] against text [K, D] or per-image text [B, K, D] -> [B, K]."""
    if text_feats.dim() == 3:
        return scale * torch.einsum("bd,bkd->bk", image_feats, text_feats)
    return scale * image_feats @ text_feats.t()


@dataclass
class StepLoss:
    total: Tensor  # weighted sum of the minimised terms
    logged: dict[str, Tensor]  # every term, detached, named `<objective>/<term>`
    raw: list[dict[str, Tensor]]  # each objective's terms with their graphs (for gradient transforms)


def objective_terms(objectives: list[BoundObjective], state: StepState) -> StepLoss:
    """Weighted total and every unweighted term; a term of weight 0 is logged but not minimised."""
    total = state.logits.new_zeros(())
    logged: dict[str, Tensor] = {}
    raw = []
    for obj in objectives:
        values = obj.objective.terms(state)
        raw.append(values)
        for term, value in values.items():
            logged[f"{obj.name}/{term}"] = value.detach()
            weight = obj.weights.get(term, 1.0)
            if weight:
                total = total + weight * value
    return StepLoss(total, logged, raw)
