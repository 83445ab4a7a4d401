"""One forward pass of a learner and the objective terms on it: shared by training and evaluation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tailprompt.backbone.precision import autocast_context
from tailprompt.objectives import StepState
from tailprompt.prompts import LearnerSpec


@dataclass
class BoundObjective:
    """A built objective: its term function and the weight of each term."""

    name: str
    fn: Callable[[StepState], dict[str, Tensor]]
    weights: dict[str, float]


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The towers' autocast on `device` under the backbone's precision policy (design §8).

    `precision` is `backbone.precision` (already resolved) or a config value (`auto` is resolved here).
    """
    return autocast_context(device, precision)


def scaled_logits(image_feats: Tensor, text_feats: Tensor, scale: float) -> Tensor:
    """`scale * cos`: image [B, D] against text [K, D] or per-image text [B, K, D] -> [B, K]."""
    if text_feats.dim() == 3:
        return scale * torch.einsum("bd,bkd->bk", image_feats, text_feats)
    return scale * image_feats @ text_feats.t()


def normalized(x: Tensor) -> Tensor:
    return F.normalize(x.float(), dim=-1)


def objective_terms(objectives: list[BoundObjective], state: StepState) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted total and every unweighted term, named `<objective>/<term>`."""
    total = state.logits.new_zeros(())
    terms: dict[str, Tensor] = {}
    for obj in objectives:
        for term, value in obj.fn(state).items():
            terms[f"{obj.name}/{term}"] = value.detach()
            weight = obj.weights.get(term, 1.0)
            if weight:
                total = total + weight * value
    return total, terms


def learner_outputs(
    learner: nn.Module, spec: LearnerSpec, image_feats: Tensor | None, images: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(image_feats [B, D], text_feats [K, D] or [B, K, D]), both L2-normalised.

    `image_feats` are the frozen tower's features (from the cache); learners that prompt the image
    tower get `images` instead and compute their own.
    """
    if spec.uses_image_tower:
        assert images is not None, "a learner that prompts the image tower needs images"
        image_feats = learner.image_features(images)
    assert image_feats is not None
    text_feats = learner.text_features(image_feats if spec.instance_conditioned else None)
    return image_feats, text_feats
