"""Shared builders for the objective tests: StepState records (the ETF builder is in tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from tailprompt.objectives import StepState


def make_state(
    text_feats: torch.Tensor,
    frozen_text_feats: torch.Tensor,
    image_feats: torch.Tensor,
    labels: torch.Tensor,
    frozen_image_feats: torch.Tensor | None = None,
    logit_scale: float = 100.0,
) -> StepState:
    """A StepState whose logits are computed from the given features like a learner would."""
    unit = torch.nn.functional.normalize
    t, f, i = unit(text_feats, dim=-1), unit(frozen_text_feats, dim=-1), unit(image_feats, dim=-1)
    fi = unit(frozen_image_feats if frozen_image_feats is not None else image_feats.detach(), dim=-1)
    if t.dim() == 2:
        logits = logit_scale * i @ t.T
    else:
        logits = logit_scale * torch.einsum("bd,bkd->bk", i, t)
    return StepState(
        logits=logits,
        labels=labels,
        image_feats=i,
        text_feats=t,
        frozen_text_feats=f,
        frozen_image_feats=fi,
        zeroshot_logits=logit_scale * fi @ f.T,
        class_ids=torch.arange(f.shape[0]),
        logit_scale=logit_scale,
    )


@pytest.fixture
def state_factory():
    return make_state
