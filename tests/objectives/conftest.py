"""Shared builders for the objective tests: StepState records (the ETF builder is in tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from tailprompt.objectives import ObjectiveContext, StepState


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


def build_terms(name: str, config=None, frozen_text_feats: torch.Tensor | None = None, clusters=None):
    """The term function of registered objective `name` (default config unless given)."""
    from tailprompt.objectives import OBJECTIVES

    spec = OBJECTIVES.get(name)
    frozen = frozen_text_feats if frozen_text_feats is not None else torch.zeros(1, 1)
    context = ObjectiveContext(frozen, [f"c{i}" for i in range(frozen.shape[0])], clusters=clusters)
    return spec.make(config if config is not None else spec.config_cls(), context).terms


@pytest.fixture
def state_factory():
    return make_state
