"""NPT: Neural-collapse-anchored Prompt Tuning (Zhu et al., AAAI 2024; seeds/002, design §3).

    L = L_CLIP + 0.3 * L_LC + 0.8 * L_MI

With unit features (E_W = E_H = 1, as the paper sets them; features are normalised here):

* Eq. 5, language-modality collapse: `L_LC = Σ_{i≠j} (<g_i, g_j> - μ)²`, `μ = -1/(K-1)`, pushing
  every off-diagonal cosine of the learned class features to the simplex-ETF value.
* Eq. 6, multi-modality isomorphism: `L_MI = Σ_k Σ_{i ∈ class k} (<z_{k,i}, g_k> - 1)²`, pulling each
  image feature onto its class's text feature.

Reduction: the paper writes plain sums. `reduction="mean"` (the default) divides by the number of
terms (the K(K-1) ordered pairs; the B images), because the sums grow with K² and with the batch
size while the weights 0.3 / 0.8 were tuned at one fixed scale (ImageNet base has 249,500 pairs);
`reduction="sum"` gives the paper's literal form. For instance-conditioned learners (`[B, K, D]`)
L_LC is computed per image and averaged, and L_MI pairs image b with `text_feats[b, y_b]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from tailprompt.objectives._shared import check_labels, class_feature_per_sample
from tailprompt.objectives.base import OBJECTIVES, ObjectiveContext, ObjectiveSpec, StepState, per_image_mean
from tailprompt.tensors import unit

Reduction = Literal["mean", "sum"]


def _reduce(values: Tensor, count: int, reduction: str) -> Tensor:
    total = values.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / count
    raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")


def language_collapse_loss(text_feats: Tensor, reduction: Reduction = "mean") -> Tensor:
    """NPT's L_LC (Eq. 5): `Σ_{i≠j} (cos(g_i, g_j) + 1/(K-1))²`, mean over the K(K-1) pairs by default.

    Args:
        text_feats: learned class features `[K, D]` (K >= 2) or `[B, K, D]` (per image, averaged).
        reduction: "mean" (default) or "sum" (the paper's literal sum).
    """

    def one(t: Tensor) -> Tensor:
        num_classes = t.shape[0]
        if num_classes < 2:
            raise ValueError("language_collapse_loss needs at least 2 classes")
        g = unit(t)
        cos = g @ g.T
        off = ~torch.eye(num_classes, dtype=torch.bool, device=g.device)
        mu = -1.0 / (num_classes - 1)
        return _reduce((cos - mu) ** 2 * off, num_classes * (num_classes - 1), reduction)

    return per_image_mean(text_feats, one)


def modality_isomorphism_loss(
    image_feats: Tensor, labels: Tensor, text_feats: Tensor, reduction: Reduction = "mean"
) -> Tensor:
    """NPT's L_MI (Eq. 6): `Σ_i (cos(z_i, g_{y_i}) - 1)²`, mean over the B images by default.

    Args:
        image_feats: `[B, D]` image features; gradients reach them (prompted image towers).
        labels: `[B]` class of each image.
        text_feats: `[K, D]`, or `[B, K, D]` where image b is paired with `text_feats[b, y_b]`.
        reduction: "mean" (default) or "sum" (the paper's literal sum).
    """
    check_labels(labels, image_feats.shape[0])
    cos = (unit(image_feats) * unit(class_feature_per_sample(text_feats, labels))).sum(-1)
    return _reduce((cos - 1.0) ** 2, image_feats.shape[0], reduction)


@dataclass
class NPTConfig:
    reduction: Reduction = "mean"  # "sum" = the paper's literal sums (scale grows with K² and B)


def build_npt(cfg: NPTConfig, context: ObjectiveContext):
    def terms(state: StepState) -> dict[str, Tensor]:
        return {
            "lc": language_collapse_loss(state.text_feats, cfg.reduction),
            "mi": modality_isomorphism_loss(state.image_feats, state.labels, state.text_feats, cfg.reduction),
        }

    return terms


OBJECTIVES.register("npt", ObjectiveSpec(NPTConfig, build_npt, default_weights={"lc": 0.3, "mi": 0.8}))
