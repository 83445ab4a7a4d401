"""Cross-entropy, KgCoOp guidance, global ETF, ZS-Norm and the zero-shot range penalty."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tailprompt.objectives import OBJECTIVES
from tailprompt.objectives.cpt import intra_cluster_etf_loss
from tailprompt.objectives.cross_entropy import cross_entropy_loss
from tailprompt.objectives.global_etf import global_etf_loss
from tailprompt.objectives.kgcoop import knowledge_guidance_loss
from tailprompt.objectives.penalty import zero_shot_range_penalty
from tailprompt.objectives.zsnorm import zero_shot_range_logits, zsnorm_loss

from .conftest import build_terms


def test_cross_entropy_hand_worked():
    logits = torch.tensor([[math.log(3.0), 0.0]])  # p(class 0) = 3/4
    assert cross_entropy_loss(logits, torch.tensor([0])).item() == pytest.approx(-math.log(0.75))


def test_kgcoop_guidance_is_one_minus_mean_cosine():
    learned = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    frozen = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # cosines 1 and 1/sqrt(2)
    expected = 1.0 - (1.0 + 2**-0.5) / 2
    assert knowledge_guidance_loss(learned, frozen).item() == pytest.approx(expected)
    per_image = torch.stack([learned, frozen])  # image 1 equals the frozen features: guidance 0
    assert knowledge_guidance_loss(per_image, frozen).item() == pytest.approx(expected / 2)


def test_global_etf_is_cpt_with_one_cluster(etf):
    g = etf(5, 9)
    assert global_etf_loss(g).item() == pytest.approx(5.0)  # diagonal only
    assert global_etf_loss(g, diagonal=False).item() == pytest.approx(0.0, abs=1e-12)
    x = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0))
    assert global_etf_loss(x).item() == pytest.approx(
        intra_cluster_etf_loss(x, torch.zeros(6, dtype=torch.long)).item()
    )
    assert OBJECTIVES.get("global_etf").default_weights == {"etf": 0.25}


def test_zsnorm_matches_direct_computation():
    gen = torch.Generator().manual_seed(1)
    logits, zs = 30 * torch.randn(4, 5, generator=gen), 20 * torch.randn(4, 5, generator=gen)
    labels = torch.tensor([0, 4, 2, 2])
    rows = []
    for o, z in zip(logits.tolist(), zs.tolist()):
        lo, hi, zlo, zhi = min(o), max(o), min(z), max(z)
        rows.append([(v - lo) / (hi - lo) * (zhi - zlo) + zlo for v in o])
    direct = torch.tensor(rows)
    normed = zero_shot_range_logits(logits, zs)
    assert torch.allclose(normed, direct, atol=1e-5)
    # each row now spans exactly the zero-shot row's range
    assert torch.allclose(normed.max(1).values, zs.max(1).values) and torch.allclose(
        normed.min(1).values, zs.min(1).values
    )
    assert zsnorm_loss(logits, zs, labels).item() == pytest.approx(
        F.cross_entropy(direct, labels).item(), rel=1e-5
    )


def test_zsnorm_constant_row_does_not_divide_by_zero():
    out = zero_shot_range_logits(torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.isfinite(out).all()


def test_penalty_matches_direct_computation():
    logits = torch.tensor([[5.0, 1.0, -3.0], [0.0, 0.5, 9.0]])
    zs = torch.tensor([[2.0, 0.0, -1.0], [1.0, 2.0, 3.0]])
    # row 0, range [-1, 2]: above 5-2=3, below -1-(-3)=2
    # row 1, range [1, 3]: above 9-3=6, below 1-0=1 and 1-.5=.5
    expected = (3.0 + 6.0) / 6 + (2.0 + 1.0 + 0.5) / 6
    assert zero_shot_range_penalty(logits, zs).item() == pytest.approx(expected)
    assert zero_shot_range_penalty(zs, zs).item() == 0.0
    assert OBJECTIVES.get("penalty").default_weights == {"penalty": 10.0}


def test_calibration_objectives_do_not_backprop_into_zero_shot_logits(state_factory):
    gen = torch.Generator().manual_seed(2)
    state = state_factory(
        torch.randn(4, 8, generator=gen, requires_grad=True),
        torch.randn(4, 8, generator=gen),
        torch.randn(3, 8, generator=gen),
        torch.tensor([0, 1, 2]),
    )
    state.zeroshot_logits.requires_grad_(True)
    for name in ("zsnorm", "penalty"):
        (term,) = build_terms(name)(state).values()
        term.backward(retain_graph=True)
    assert state.zeroshot_logits.grad is None
