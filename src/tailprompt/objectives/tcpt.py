"""TCPT: Towards Calibrating Prompt Tuning (CVPR 2026; seeds/004), as its public code computes it.

    L = L_CE + 1.0 * R_margin + 5.0 * R_mom        (ashshaksharifdeen/TCPT: trainers/*.py)

* Margin mean-variance (`trainers/regularizers.py: margin_mean_var`): per sample
  `m_i = z_{i,y_i} - max_{j≠y_i} z_{i,j}` on the *scaled* logits (x logit_scale, ~100), and
  `R_margin = -α · mean(m) + β · Var(m)` with the population variance; α = 0.1, β = 0.01 are hard-coded
  at every call site of the reference (its config keys are read but unused).
* Text moment matching (`text_moment_matching`): over the K class features (not a batch of images),
  `R_mom = ||μ_t - μ_f||² + ||Cov_t - Cov_f||_F²`, `μ` the mean over classes and
  `Cov = (X - μ)ᵀ(X - μ) / K` (population, `[D, D]`), on L2-normalised tuned and frozen features.

For instance-conditioned learners (`[B, K, D]`) R_mom is computed per image and averaged (the
reference's CoCoOp trainer used the last image of the batch only, a loop-variable quirk not copied).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tailprompt.objectives._shared import check_labels
from tailprompt.objectives.base import OBJECTIVES, ObjectiveContext, ObjectiveSpec, StepState, per_image_mean
from tailprompt.tensors import unit


def logit_margins(logits: Tensor, labels: Tensor) -> Tensor:
    """`m_i = z_{i,y_i} - max_{j≠y_i} z_{i,j}` for `logits [B, K]` (K >= 2), `labels [B]` -> `[B]`."""
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [B, K] with K >= 2, got shape {tuple(logits.shape)}")
    check_labels(labels, logits.shape[0])
    true = logits.gather(1, labels[:, None]).squeeze(1)
    is_true = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels[:, None], True)
    rival = logits.masked_fill(is_true, float("-inf")).max(dim=1).values
    return true - rival


def margin_mean_variance_loss(
    logits: Tensor, labels: Tensor, alpha: float = 0.1, beta: float = 0.01
) -> Tensor:
    """TCPT's `R_margin = -α mean(m) + β Var(m)` (population variance) on the scaled logits `[B, K]`."""
    margins = logit_margins(logits, labels)
    return -alpha * margins.mean() + beta * margins.var(unbiased=False)


def _moment_gap(tuned: Tensor, frozen: Tensor) -> Tensor:
    t = unit(tuned)
    mu_t, mu_f = t.mean(0), frozen.mean(0)
    ct, cf = t - mu_t, frozen - mu_f
    cov_t = ct.T @ ct / t.shape[0]  # [D, D]
    cov_f = cf.T @ cf / frozen.shape[0]
    return ((mu_t - mu_f) ** 2).sum() + ((cov_t - cov_f) ** 2).sum()


def text_moment_matching_loss(text_feats: Tensor, frozen_text_feats: Tensor) -> Tensor:
    """TCPT's `R_mom = ||μ_t - μ_f||² + ||Cov_t - Cov_f||_F²` over the K class features.

    Args:
        text_feats: learned `[K, D]` or `[B, K, D]` (per image, averaged).
        frozen_text_feats: frozen `[K, D]`; a constant (no gradient).
    """
    frozen = unit(frozen_text_feats.detach())
    return per_image_mean(text_feats, lambda t: _moment_gap(t, frozen))


@dataclass
class TCPTConfig:
    alpha: float = 0.1  # weight of the mean margin (hard-coded 0.1 in the reference)
    beta: float = 0.01  # weight of the margin variance (hard-coded 0.01 in the reference)


def build_tcpt(cfg: TCPTConfig, context: ObjectiveContext):
    def terms(state: StepState) -> dict[str, Tensor]:
        return {
            "margin": margin_mean_variance_loss(state.logits, state.labels, cfg.alpha, cfg.beta),
            "moment": text_moment_matching_loss(state.text_feats, state.frozen_text_feats),
        }

    return terms


OBJECTIVES.register(
    "tcpt", ObjectiveSpec(TCPTConfig, build_tcpt, default_weights={"margin": 1.0, "moment": 5.0})
)
