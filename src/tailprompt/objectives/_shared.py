"""Small tensor helpers shared by the objective files (not part of the public API)."""

from __future__ import annotations

import torch
from torch import Tensor


def class_feature_per_sample(text_feats: Tensor, labels: Tensor) -> Tensor:
    """The text feature of each sample's class: `[K, D]` or `[B, K, D]` -> `[B, D]`.

    For instance-conditioned learners (CoCoOp) image b has its own class features, so the
    feature paired with image b is `text_feats[b, y_b]` (its own conditioned prompt).
    """
    if text_feats.dim() == 2:
        return text_feats[labels]
    if text_feats.dim() == 3:
        if text_feats.shape[0] != labels.shape[0]:
            raise ValueError(
                f"text_feats [B, K, D] has B={text_feats.shape[0]} but labels has {labels.shape[0]} entries"
            )
        return text_feats[torch.arange(labels.shape[0], device=labels.device), labels]
    raise ValueError(f"text_feats must be [K, D] or [B, K, D], got shape {tuple(text_feats.shape)}")


def check_labels(labels: Tensor, batch: int) -> None:
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"labels must be [B] with B={batch}, got shape {tuple(labels.shape)}")
