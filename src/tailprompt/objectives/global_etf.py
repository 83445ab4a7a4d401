"""Global ETF: CPT's ETF term with a single cluster holding every class (the baseline CPT argues against).

    L_ETF = || C + 1/(K-1) (11ᵀ - I) ||_F²,   C the K x K cosine matrix of the learned class features

i.e. `cpt.intra_cluster_etf_loss` with M = 1, at CPT's weight 0.25 so that a comparison with CPT
isolates the clustering. It differs from NPT's L_LC only in the reduction (a sum over pairs plus the
constant diagonal K, against NPT's mean over pairs). An exact simplex ETF of K unit vectors exists only
for K <= D + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tailprompt.objectives.base import OBJECTIVES, ObjectiveContext, ObjectiveSpec, StepState
from tailprompt.objectives.cpt import intra_cluster_etf_loss


def global_etf_loss(text_feats: Tensor, diagonal: bool = True) -> Tensor:
    """`|| C + 1/(K-1)(11ᵀ - I) ||_F²` over all K classes; `[K, D]` or `[B, K, D]` (per image, averaged)."""
    num_classes = text_feats.shape[-2]
    one_cluster = torch.zeros(num_classes, dtype=torch.long, device=text_feats.device)
    return intra_cluster_etf_loss(text_feats, one_cluster, diagonal)


@dataclass
class GlobalETFConfig:
    """No options besides the weight (`weights: {etf: 0.25}`)."""


def build_global_etf(cfg: GlobalETFConfig, context: ObjectiveContext):
    def terms(state: StepState) -> dict[str, Tensor]:
        return {"etf": global_etf_loss(state.text_feats)}

    return terms


OBJECTIVES.register(
    "global_etf", ObjectiveSpec(GlobalETFConfig, build_global_etf, default_weights={"etf": 0.25})
)
