"""DeKg's independence term (Li et al., "Divergence-enhanced Knowledge-guided Context Optimization", ICLR 2025).

DeKg is KgCoOp plus an HSIC penalty between the learned and the hand-crafted class features:

    L = CE + w1 * (1 - mean_k cos(w_k, w_clip_k)) + w2 * HSIC(W, W_clip)

with `w1 = 8`, `w2 = 6` in `cnunlp/DeKg:scripts/run.sh`. The guidance term is the `kgcoop` objective;
this file is the HSIC term only, computed exactly as `cnunlp/DeKg:trainers/loss.py` (`HSICLoss`) does:

* each `[K, D]` matrix (rows already L2-normalised) is divided by its Frobenius norm;
* linear kernels `K_t = W W^T`, `K_c = W_clip W_clip^T`; centring `H = I - (1/K) 1 1^T`;
* `HSIC = trace(H K_t H K_c)`, with **no** `1 / (K - 1)^2` factor (the textbook estimator's
  normalisation is omitted by the reference; the weight 6 was tuned on the unnormalised value).

Minimising it pushes the learned prompt's class geometry away from the hand-crafted one (their
independence), while the guidance term keeps each class close to its hand-crafted feature. The
hand-crafted features are a constant: the reference computes them once under `torch.no_grad()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tailprompt.objectives.base import OBJECTIVES, ObjectiveContext, ObjectiveSpec, StepState, per_image_mean


def centering_matrix(n: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """`H = I - (1/n) 1 1^T` `[n, n]`."""
    return torch.eye(n, device=device, dtype=dtype) - torch.full((n, n), 1.0 / n, device=device, dtype=dtype)


def hsic_independence_loss(text_feats: Tensor, frozen_text_feats: Tensor) -> Tensor:
    """DeKg's `trace(H K_t H K_c)` on Frobenius-normalised linear kernels (scalar).

    Args:
        text_feats: learned class features `[K, D]`, or `[B, K, D]` for instance-conditioned learners
            (then per image, averaged).
        frozen_text_feats: hand-crafted class features `[K, D]`; a constant (no gradient).
    """
    frozen = frozen_text_feats.detach()
    frozen = frozen / torch.linalg.norm(frozen)
    kernel_c = frozen @ frozen.T  # [K, K]
    h = centering_matrix(frozen.shape[0], frozen.device, frozen.dtype)

    def one(t: Tensor) -> Tensor:
        t = t / torch.linalg.norm(t)  # Frobenius norm of the whole matrix, as the reference
        kernel_t = t @ t.T
        return torch.trace(h @ (kernel_t @ (h @ kernel_c)))

    return per_image_mean(text_feats, one)


@dataclass
class DeKgConfig:
    """DeKg's HSIC term has no options besides its weight (`weights: {hsic: 6.0}`)."""


def build_dekg(cfg: DeKgConfig, context: ObjectiveContext):
    def terms(state: StepState) -> dict[str, Tensor]:
        return {"hsic": hsic_independence_loss(state.text_feats, state.frozen_text_feats)}

    return terms


OBJECTIVES.register("dekg", ObjectiveSpec(DeKgConfig, build_dekg, default_weights={"hsic": 6.0}))
