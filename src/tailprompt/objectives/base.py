"""The objective contract: every training term reads one `StepState` and returns named scalars.

An objective is a pure function of tensors plus a thin registered wrapper. The engine builds one
`StepState` per step, calls every configured objective, and minimises `sum(weight * term)` while
logging each term on its own. Adding an objective = one new file + one `OBJECTIVES.register` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tailprompt.registry import Registry


@dataclass
class StepState:
    """Everything a training term may need for one step.

    Shapes: B images, K classes of the training label space, D joint embedding width.
    Features are L2-normalised. For instance-conditioned learners (CoCoOp) `text_feats` is
    `[B, K, D]`; a term defined on class prototypes then applies per image and averages.
    """

    logits: Tensor  # [B, K] scaled by logit_scale
    labels: Tensor  # [B] in 0..K-1
    image_feats: Tensor  # [B, D] learner's (prompted) image features
    text_feats: Tensor  # [K, D] or [B, K, D] learned class features
    frozen_text_feats: Tensor  # [K, D] backbone features of the dataset's zero-shot template
    frozen_image_feats: Tensor  # [B, D] the frozen image tower's features
    zeroshot_logits: Tensor  # [B, K] logit_scale * frozen_image @ frozen_text.T
    class_ids: Tensor  # [K] ids of the training label space (0..K-1)
    logit_scale: float  # exp of the backbone's learned log-scale (~100 for OpenAI CLIP)
    clusters: Tensor | None = None  # [K] cluster id of each class (CPT), None if not computed


@dataclass(frozen=True)
class ObjectiveSpec:
    """How an objective is built: its config dataclass and a builder returning the term function.

    `build(config, context)` returns `fn(state) -> dict[str, Tensor]` (scalar terms, unweighted).
    `context` gives build-time facts (e.g. frozen text features for CPT's clustering) and the
    builder may add entries to `context["record"]` that end up in result.json (e.g. clusters).
    `needs_clusters` tells the engine to compute CPT clusters before training.
    `default_weights` maps each term name to its default weight.
    """

    config_cls: type
    build: Callable[[Any, dict[str, Any]], Callable[[StepState], dict[str, Tensor]]]
    default_weights: dict[str, float]
    needs_clusters: bool = False


OBJECTIVES: Registry[ObjectiveSpec] = Registry("objective")


def per_image_mean(text_feats: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply a class-prototype term `fn([K,D]) -> scalar` to `[K,D]`, or per image to `[B,K,D]` and average."""
    if text_feats.dim() == 2:
        return fn(text_feats)
    return torch.stack([fn(t) for t in text_feats]).mean()
